"""How the loader groups blocks into tokenizer jobs: small jobs at both ends of the schedule.

A block is one document per lane (TokenLoader: block p holds slots [p*L, (p+1)*L)); a job is a
run of consecutive blocks tokenized as one task. Jobs ramp up 1, 2, 4, ... blocks to
`per_job`, so the first batch waits for a one-block task, not a full one. When the schedule is
finite (`total_blocks` known), they ramp down again: the last jobs hold ..., 4, 2, 1 blocks.
Without that the epoch ends with one tokenizer thread finishing a full task while the other has
nothing left, and then with the loader's thread packing that task's batches alone (measured on
bench/loader.py's 19-shard corpus: 8-12 ms with one thread busy and ~5 ms with none, of ~530 ms).

Grouping never changes a batch: a task's result depends only on its documents, and every rank
derives the same layout from the config. Pure arithmetic, O(1) memory at any corpus size
(an array of job starts would be 8 bytes per job: 62 MB for 2x10^9 documents on one rank).
"""
from __future__ import annotations


class JobLayout:
    def __init__(self, per_job: int, total_blocks: int | None = None):
        if per_job < 1:
            raise ValueError(f"per_job must be >= 1, got {per_job}")
        self.per_job = per_job
        self.ramp = (per_job - 1).bit_length()  # head jobs: 1, 2, ..., 2^(ramp-1) blocks
        self.head = (1 << self.ramp) - 1  # blocks in the head jobs
        if total_blocks is None:  # endless schedule: no tail
            self.tail_ramp, self.tail_start, self.mid_jobs = 0, None, None
            return
        end = max(total_blocks, self.head)
        # Tail jobs 2^(t-1), ..., 2, 1 blocks (t <= ramp) end exactly at `end`.
        self.tail_ramp = min(self.ramp, (end - self.head + 1).bit_length() - 1)
        self.tail_start = end - ((1 << self.tail_ramp) - 1)
        self.mid_jobs = -(-(self.tail_start - self.head) // per_job)  # the last may be shorter
        self._end = end

    def start(self, job: int) -> int:
        """First block of `job` (start(job + 1) is one past its last)."""
        if job <= self.ramp:
            return (1 << job) - 1
        k = job - self.ramp
        if self.mid_jobs is None:
            return self.head + k * self.per_job
        if k <= self.mid_jobs:
            return min(self.head + k * self.per_job, self.tail_start)
        t = k - self.mid_jobs
        if t <= self.tail_ramp:  # after t tail jobs: 2^(r-1) + ... + 2^(r-t) blocks
            return self.tail_start + (1 << self.tail_ramp) - (1 << (self.tail_ramp - t))
        return self._end + (t - self.tail_ramp) * self.per_job  # past the schedule: lanes find it dry

    def past_end(self, job: int) -> bool:
        """True for a job wholly after the last block of a finite schedule (its tasks are empty)."""
        return self.mid_jobs is not None and self.start(job) >= self._end

    def of(self, block: int) -> int:
        """The job holding `block` (the inverse of start)."""
        if block < self.head:
            return (block + 1).bit_length() - 1
        if self.mid_jobs is None or block < self.tail_start:
            return self.ramp + (block - self.head) // self.per_job
        if block < self._end:
            left = (1 << self.tail_ramp) - (block - self.tail_start)  # 1 .. 2^tail_ramp
            return self.ramp + self.mid_jobs + self.tail_ramp - (left - 1).bit_length()
        return self.ramp + self.mid_jobs + self.tail_ramp + (block - self._end) // self.per_job
