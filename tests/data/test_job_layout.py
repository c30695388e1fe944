"""JobLayout: blocks grouped into tokenizer jobs, small at both ends of a finite schedule."""
import pytest

from glotta.data.job_layout import JobLayout


def _jobs(layout: JobLayout, blocks: int) -> list[int]:
    """Job sizes covering blocks [0, blocks)."""
    sizes, job = [], 0
    while layout.start(job) < blocks:
        sizes.append(layout.start(job + 1) - layout.start(job))
        job += 1
    return sizes


@pytest.mark.parametrize("per_job", [1, 2, 3, 5, 8, 64, 100])
@pytest.mark.parametrize("total", [None, 0, 1, 2, 6, 7, 40, 63, 64, 127, 128, 129, 1000, 1001])
def test_starts_and_jobs_are_inverse_and_jobs_cover_every_block_once(per_job, total):
    lay = JobLayout(per_job, total)
    end = (total or 0) + 5 * per_job + 10  # past the schedule too: lanes ask for blocks there
    job = 0
    for block in range(end):
        while lay.start(job + 1) <= block:
            job += 1
        assert lay.start(job) <= block < lay.start(job + 1)
        assert lay.of(block) == job, (block, job)
    sizes = _jobs(lay, end)
    assert all(1 <= s <= per_job for s in sizes)
    ramp = (per_job - 1).bit_length()
    assert sizes[:ramp] == [1 << i for i in range(ramp)][: len(sizes[:ramp])]


@pytest.mark.parametrize("per_job, total", [(64, 2343), (64, 2304), (8, 20), (100, 5000), (5, 6)])
def test_a_finite_schedule_ends_with_halving_jobs_exactly_at_its_last_block(per_job, total):
    lay = JobLayout(per_job, total)
    sizes = _jobs(lay, total)
    # The last job ends at the last block (none spills past it), unless the head ramp alone is longer.
    assert sum(sizes) == max(total, lay.head)
    ramp = (per_job - 1).bit_length()
    if total >= 2 * lay.head:  # room for both ramps
        assert sizes[-ramp:] == [1 << i for i in reversed(range(ramp))], sizes
    if total >= 2 * lay.head + per_job:  # room for a full job between the ramps
        assert max(sizes) == per_job


def test_an_endless_schedule_keeps_full_jobs():
    lay = JobLayout(64)
    assert _jobs(lay, 10_000)[7:] == [64] * len(_jobs(lay, 10_000)[7:])
    assert lay.of(10**15) == lay.ramp + (10**15 - lay.head) // 64  # arithmetic, no table
