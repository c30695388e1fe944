"""TokenLoader: shards -> SentencePiece on the fly -> packed, mixed Megatron batches, resumable.

The global order does not depend on the data-parallel size:

  schedule   slot j -> (language, document): the C++ largest-error interleave (mixing.py).
  lanes      the global batch has `global_batch_size` rows; row i of every global step comes
             from lane i. Slots are dealt to lanes in blocks: block p holds slots
             [p*L, (p+1)*L) and a seeded permutation gives each lane exactly one of them, so
             lane i's p-th document is fixed by the config alone.
  ranks      rank r owns the contiguous lanes [r*L/D, (r+1)*L/D) and yields them as L/(D*B)
             micro-batches per global step. It reads and tokenizes only its lanes' documents,
             so tokenization scales with D, and ranks never share a document.

Every rank yields one micro-batch per owned lane group per step, so all ranks yield the same
number of batches. A lane's packer state is three integers (packing.py); a rank's state is
its lanes' states, and an elastic resume hands lanes to their new owners (`merge_states`).
Because lane contents do not depend on D, a global batch after an elastic resume is bitwise
identical to the same global batch of an uninterrupted run; only which rank holds which rows
changes (see docs/loader.md).
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError, model_validator

from glotta.config import StrictModel
from glotta.data.exclude import read_exclude
from glotta.data.job_layout import JobLayout
from glotta.data.loader_state import STATE_VERSION, check_fingerprint, merge_states
from glotta.data.mixing import MixConfig, Schedule, doc_caps, mix_weights
from glotta.data.native import deal, token_dtype
from glotta.data.packing import batch_totals, new_lanes, row_stats
from glotta.data.corpus_index import CorpusIndex, ReadTask, open_corpus_index
from glotta.data.tokenize import Encoder, open_tokenizer, thread_encode, worker_encode, worker_init
from glotta.errors import ConfigError, DataError
from glotta.seeding import stable_seed, stable_seeds

log = logging.getLogger(__name__)

class LoaderConfig(StrictModel):
    sources: list[str] = Field(min_length=1, description="shard directories or .tar files")
    tokenizer: str = Field(description="SentencePiece .model file")
    seq_len: int = Field(ge=2, description="tokens per row (labels are shifted by one)")
    micro_batch_size: int = Field(ge=1)
    global_batch_size: int | None = Field(None, ge=1, description="rows per step over all ranks (default mbs*dp)")
    mix: MixConfig = Field(default_factory=MixConfig)
    seed: int = 1234
    num_workers: int = Field(0, ge=0, description="tokenizer threads or processes (0 = in the loader's thread)")
    worker_type: Literal["thread", "process"] = Field(
        "thread", description="thread: SentencePiece releases the GIL, no fork, no pickling; process: a pool like torch's DataLoader"
    )
    packing: Literal["concat", "best_fit"] = "best_fit"
    best_fit_buffer: int = Field(64, ge=1, description="documents per lane buffer for best_fit")
    reset_position_ids: bool = True
    eod_mask_loss: bool = False
    exclude: list[str] = Field(default_factory=list, description="exclude lists (shard.tar/KEY lines or Parquet)")
    num_batches: int | None = Field(None, ge=1, description="micro-batches per rank, then stop (pads if data runs out)")
    docs_per_task: int = Field(512, ge=1, description="documents per tokenizer task")
    start_method: Literal["fork", "forkserver", "spawn"] = Field(
        "fork", description="how workers start (fork: like torch's DataLoader; spawn needs a __main__ guard)"
    )
    strict: bool = False

    @model_validator(mode="after")
    def _check(self) -> "LoaderConfig":
        if self.global_batch_size is not None and self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        return self


class DocIds(Sequence):
    """`shard.tar/KEY` of each segment of a batch (`""` for padding), as a read-only sequence.

    The strings are built on first access: a trainer that never reads them (pretraining) pays
    nothing per segment; CAT scoring reads them. `ids` holds the loader's integer document ids
    (shard << 32 | document in the shard's index, -1 for padding). Pickles as a plain list."""

    __slots__ = ("_index", "ids", "_strings")

    def __init__(self, index: CorpusIndex, ids: np.ndarray):
        self._index, self.ids, self._strings = index, ids, None

    def _list(self) -> list[str]:
        if self._strings is None:
            self._strings = [self._index.doc_id(g) if g >= 0 else "" for g in self.ids.tolist()]
        return self._strings

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return self._list()[i]

    def __iter__(self):
        return iter(self._list())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and self._list() == list(other)

    __hash__ = None  # mutable-list semantics: equal to a list, so not hashable

    def __repr__(self) -> str:
        return repr(self._list())

    def __reduce__(self):
        return (list, (self._list(),))


_TENSORS = ("tokens", "labels", "loss_mask", "position_ids", "lang_ids", "cu_seqlens")  # a batch's torch tensors


class TokenLoader:
    """Iterable of Megatron batches for one data-parallel rank (see the module docstring)."""

    def __init__(
        self,
        sources: list[str] | str | None = None,
        tokenizer: str | None = None,
        seq_len: int | None = None,
        micro_batch_size: int | None = None,
        mix: MixConfig | dict | str | None = None,
        seed: int = 1234,
        dp_rank: int = 0,
        dp_size: int = 1,
        num_workers: int = 0,
        *,
        config: LoaderConfig | None = None,
        **kwargs: Any,
    ):
        if config is None:
            if isinstance(sources, (str, Path)):
                sources = [str(sources)]
            if isinstance(mix, str):
                mix = {"method": mix}
            fields = dict(
                sources=[str(s) for s in sources or []],
                tokenizer=str(tokenizer) if tokenizer is not None else None,
                seq_len=seq_len,
                micro_batch_size=micro_batch_size,
                mix=mix if mix is not None else MixConfig(),
                seed=seed,
                num_workers=num_workers,
                **kwargs,
            )
            try:
                config = LoaderConfig(**fields)
            except ValidationError as e:
                err = e.errors()[0]
                key = ".".join(str(x) for x in err["loc"]) or "loader"
                raise ConfigError(f"loader.{key}: {err['msg']}") from None
        self.cfg = cfg = config
        if not 0 <= dp_rank < dp_size:
            raise ConfigError(f"dp_rank must be in [0, dp_size): got rank {dp_rank} of {dp_size}")
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.global_batch = cfg.global_batch_size or cfg.micro_batch_size * dp_size
        if self.global_batch % (cfg.micro_batch_size * dp_size):
            raise ConfigError(
                f"loader.global_batch_size ({self.global_batch}) must be a multiple of "
                f"micro_batch_size * dp_size ({cfg.micro_batch_size} * {dp_size})"
            )
        self.row_len = cfg.seq_len + 1

        _, tok = open_tokenizer(cfg.tokenizer)
        self.vocab_size, self.eod_id, self.pad_id = tok.vocab_size, tok.eod_id, tok.pad_id
        self._dtype = token_dtype(tok.vocab_size)
        exclude = read_exclude(cfg.exclude)
        self.index: CorpusIndex = open_corpus_index(cfg.sources, exclude, cfg.strict)
        self._setup_mix(exclude)

        L, D = self.global_batch, dp_size
        self.lane_ids = list(range(dp_rank * L // D, (dp_rank + 1) * L // D))
        self.groups = len(self.lane_ids) // cfg.micro_batch_size
        B = cfg.micro_batch_size
        self._group_lanes = [list(range(g * B, (g + 1) * B)) for g in range(self.groups)]  # local lane numbers
        self._lanes = self._new_lanes()
        self._micro = 0
        self._jobs: dict[int, Any] = {}
        self._collected: set[int] = set()
        self._low_block = 0  # the lowest block any lane still needs
        self._low_job = 0  # ... and its job
        self.tokenized_docs = 0  # by this process since start (depends on prefetch; not in the state)
        # Jobs ramp up 1, 2, 4, ... blocks to docs_per_task's size and, on a finite schedule (its
        # length is the sum of the caps), down again at its end (data/job_layout.py).
        total = -(-sum(self._caps) // self.global_batch) if self.finite else None
        self._layout = JobLayout(max(1, round(cfg.docs_per_task / len(self.lane_ids))), total)
        self._pool: Executor | None = None
        self._thread_encoders: list[Encoder] = []  # the thread workers' (worker_init), closed by close()
        self._encoder: Encoder | None = None
        self._fingerprint = {
            "seq_len": cfg.seq_len,
            "global_batch_size": self.global_batch,
            "packing": cfg.packing,
            "best_fit_buffer": cfg.best_fit_buffer if cfg.packing == "best_fit" else None,
            "seed": cfg.seed,
            "mix": cfg.mix.model_dump(),
            "langs": list(self.langs),
            "documents": self.index.documents,
            "shards": self.index.shard_list_hash(),  # a hash, not the names: 16 characters at any size
            "exclude": hashlib.sha256("\n".join(sorted(exclude)).encode()).hexdigest()[:16],
            "tokenizer": tok.sha256,
        }

    # ---- setup ----------------------------------------------------------------------------
    def _setup_mix(self, exclude: set[str]) -> None:
        cfg, idx = self.cfg, self.index
        tables = dict(idx.tables)
        if cfg.mix.langs is not None:
            empty = sorted(set(cfg.mix.langs) - set(tables))
            if empty:
                raise DataError(f"mix.langs: no documents for {empty} in {cfg.sources} (empty or excluded)")
            tables = {lang: tables[lang] for lang in cfg.mix.langs}
        if not tables:
            raise DataError(f"no documents to load from {cfg.sources} ({dict(idx.counters)})")
        sizes = {lang: float(t.nbytes) for lang, t in tables.items()}
        weights = mix_weights(cfg.mix, sizes)
        self.langs: list[str] = list(weights)
        self.weights = weights
        n_docs = [tables[lang].docs for lang in self.langs]
        # Document rate = byte share / mean document size, so byte shares follow the weights.
        rates = [weights[lang] * n / max(sizes[lang], 1.0) for lang, n in zip(self.langs, n_docs)]
        self._caps = caps = doc_caps(cfg.mix, n_docs)
        self.finite = all(c >= 0 for c in caps)
        if self.finite and self.dp_size > 1 and cfg.num_batches is None:
            raise ConfigError(
                "loader.num_batches: the data is finite (mix.exhausted='drop' or mix.max_epochs) and dp_size > 1; "
                "set num_batches so that every rank yields the same number of batches"
            )
        self._locate = idx.locator(self.langs)
        self._schedule_args = (rates, n_docs, caps, stable_seed(cfg.seed, "schedule"), cfg.mix.shuffle)
        self.schedule = Schedule(*self._schedule_args)

    def _new_lanes(self):
        """This rank's lanes (local lane i is global lane lane_ids[i]), all at state (0, 0, 0)."""
        cfg = self.cfg
        return new_lanes(
            self._dtype, len(self.lane_ids), self.row_len, cfg.packing, cfg.best_fit_buffer, self.pad_id, self.eod_id,
            cfg.reset_position_ids, cfg.eod_mask_loss, self.langs,
        )  # fmt: skip

    # ---- documents ------------------------------------------------------------------------
    def _job_docs(self, job: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray, ReadTask]:
        """((block, local lane), language, global doc index or -1) for every owned lane of the
        job's blocks, block-major, and the ReadTask of its documents (those with an index)."""
        L = self.global_batch
        b0, b1 = self._layout.start(job), self._layout.start(job + 1)
        blocks = np.arange(max(b0, self._low_block), b1, dtype=np.int64)  # blocks below: no lane needs them
        # Block p's slot for each lane: permutation(L, seed of p)[lane], all blocks in one C++ call.
        dealt = deal(L, stable_seeds(self.cfg.seed, "deal", last=blocks), self.lane_ids)
        slots = (blocks[:, None] * L + dealt).reshape(-1)
        lang, doc, _ = self.schedule.lookup(slots)
        gidx = np.full(len(slots), -1, np.int64)
        ok = np.flatnonzero(lang >= 0)
        gidx[ok], task = self._locate.task(lang[ok], doc[ok])
        n = len(self.lane_ids)
        where = (np.repeat(blocks, n), np.tile(np.arange(n, dtype=np.int64), len(blocks)))
        return where, lang, gidx, task

    def _submit(self, job: int) -> None:
        where, lang, gidx, task = self._job_docs(job)
        if task.n == 0:  # past the end of the schedule (lanes finding it dry): no round trip through a worker
            fut = Future()
            fut.set_result((np.zeros(0, self._dtype), np.zeros(0, np.int64), np.zeros(0, np.int8)))
        elif self._pool is not None:
            fut = self._pool.submit(thread_encode if self.cfg.worker_type == "thread" else worker_encode, task)
        else:
            fut = None
        self._jobs[job] = (where, lang, gidx, fut, task)

    def _collect(self, job: int) -> None:
        where, lang, gidx, fut, task = self._jobs.pop(job)
        self._collected.add(job)
        if fut is not None:
            try:
                flat, lengths, status = fut.result()
            except BrokenProcessPool as e:
                raise DataError(f"a tokenizer worker process died (killed, or out of memory?): {e}") from None
        else:
            if self._encoder is None:
                self._encoder = Encoder(self.index.shards, self.cfg.tokenizer, self.cfg.strict)
            flat, lengths, status = self._encoder.encode(task)
        self.tokenized_docs += len(lengths)
        self._lanes.add(where[0], where[1], lang, gidx, flat, lengths, status)

    def _deliver(self, block: int) -> None:
        """Tokenize (or wait for) the job holding `block`, and submit the next ones."""
        lay = self._layout
        job = lay.of(block)
        ahead = 2 * self.cfg.num_workers if self._pool is not None else 0
        if self._micro == 0:  # the first batch: plan one job ahead, not 2 x num_workers, before it
            ahead = min(ahead, 1)
        last = job + ahead  # keep the workers busy with the next jobs ...
        if ahead and block >= lay.head:  # ... and in the tail ramp with as many blocks as `ahead` full jobs
            want = lay.start(job + 1) + ahead * lay.per_job
            while lay.start(last + 1) < want and not lay.past_end(last + 1):
                last += 1
        for j in range(job, last + 1):
            if j not in self._jobs and j not in self._collected:
                self._submit(j)
        self._collect(job)

    def _evict(self) -> None:
        low = self._lanes.first_needed()
        if low == self._low_block:  # most batches: no lane left a block
            return
        self._lanes.evict(low)
        self._low_block = low
        low_job = self._layout.of(low)
        if low_job == self._low_job:
            return
        self._low_job = low_job
        # Once per job, not per batch: the schedule drops slots in chunks of 65,536 anyway.
        self.schedule.forget(low * self.global_batch)
        self._collected = {j for j in self._collected if j >= low_job}
        for j in [j for j in self._jobs if j < low_job]:
            _, _, _, fut, _ = self._jobs.pop(j)
            if fut is not None:
                fut.cancel()

    # ---- iteration ------------------------------------------------------------------------
    def _start(self) -> None:
        if self.cfg.num_workers == 0 or self._pool is not None:
            return
        init = (self.index.shards, self.cfg.tokenizer, self.cfg.strict)
        if self.cfg.worker_type == "thread":
            self._pool = ThreadPoolExecutor(
                self.cfg.num_workers, thread_name_prefix="glotta-tok", initializer=worker_init, initargs=init + (self._thread_encoders,)
            )
        else:
            self._pool = ProcessPoolExecutor(
                self.cfg.num_workers, mp_context=get_context(self.cfg.start_method), initializer=worker_init, initargs=init
            )
        self._submit(0)  # the first (small) task starts while the caller is still setting up

    def __iter__(self):
        self._start()
        while self.cfg.num_batches is None or self._micro < self.cfg.num_batches:
            batch = self._next_batch()
            if batch is None:
                return
            yield batch

    def _next_batch(self) -> dict | None:
        group = self._group_lanes[self._micro % self.groups]
        # The lanes count what each batch holds (stats()); an all-dry batch only when it is yielded.
        padded = self.cfg.num_batches is not None
        while True:
            out = self._lanes.next_batch(group, padded)
            if not isinstance(out, int):
                break
            self._deliver(out)  # a lane needs a block no task delivered yet; nothing changed
        if out["dry"] and not padded:
            return None
        batch = {k: torch.from_numpy(out[k]) for k in _TENSORS}
        batch["max_seqlen"] = out["max_seqlen"]
        batch["doc_langs"] = out["doc_langs"]  # "" for padding
        batch["doc_ids"] = DocIds(self.index, out["doc_id"])
        self._micro += 1
        self._evict()
        return batch

    # ---- stats and state ------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        lang_tokens = self._lanes.lang_tokens
        tokens = int(lang_tokens.sum())
        bt, st = batch_totals(self._lanes), row_stats(self._lanes)
        total = tokens + bt.pad_tokens
        return {
            "batches": self._micro,
            "rows": bt.rows,
            "tokens": tokens,
            "padding_pct": 100.0 * bt.pad_tokens / total if total else 0.0,
            "truncation_pct": 100.0 * st.split / st.docs if st.docs else 0.0,
            "documents": st.docs,
            "split_documents": st.split,
            "pad_rows": bt.pad_rows,
            "tokenized_documents": self.tokenized_docs,
            "tokens_per_lang": {lang: int(n) for lang, n in zip(self.langs, lang_tokens)},
            "weights": dict(self.weights),
            "skipped": {k: int(v) for k, v in sorted(self.index.counters.items()) if k != "indexed" and v}
            | ({"utf8_replaced": bt.utf8_replaced} if bt.utf8_replaced else {})
            | ({"empty_text": st.empty} if st.empty else {}),
        }

    def state_dict(self) -> dict[str, Any]:
        """State after the last yielded batch: small, versioned, plain types."""
        st, bt = row_stats(self._lanes), batch_totals(self._lanes)
        # The counts as the loader kept them before they moved into the lanes: saved states stay readable.
        counts = {"pad_tokens": bt.pad_tokens, "rows": bt.rows} if bt.rows else {}
        counts |= {k: v for k, v in (("pad_rows", bt.pad_rows), ("utf8_replaced", bt.utf8_replaced)) if v}
        return {
            "version": STATE_VERSION,
            "fingerprint": dict(self._fingerprint),
            "dp_rank": self.dp_rank,
            "dp_size": self.dp_size,
            "lanes": [[lane, *self._lanes.state(i)] for i, lane in enumerate(self.lane_ids)],
            "schedule": self.schedule.snapshot(),  # so a resume does not replay the schedule from slot 0
            "stats": {
                "docs": st.docs,
                "split": st.split,
                "empty": st.empty,
                "counts": counts,
                "lang_tokens": self._lanes.lang_tokens.tolist(),
            },
        }

    @staticmethod
    def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
        """One state holding every lane, from the states of all ranks (for an elastic resume)."""
        return merge_states(states)

    def global_state_dict(self, group=None) -> dict[str, Any]:
        """Every rank's lanes in one state (torch.distributed all_gather over `group`); resumable
        with any dp_size. Without an initialised process group it is this rank's state."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.state_dict()
        states: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(states, self.state_dict(), group=group)
        return self.merge_states(states)

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Restore a state of this rank, or (elastic resume) a merged state / the list of all ranks' states."""
        if isinstance(state, list):
            state = self.merge_states(state)
        if state.get("version") != STATE_VERSION:
            raise DataError(f"loader state version {state.get('version')!r}; this glotta reads version {STATE_VERSION}")
        check_fingerprint({"fingerprint": self._fingerprint}, state, ours="now")
        lanes = {int(e[0]): tuple(int(x) for x in e[1:]) for e in state["lanes"]}
        missing = [i for i in self.lane_ids if i not in lanes]
        if missing:
            raise DataError(
                f"loader state has no entry for lanes {missing[:8]} of rank {self.dp_rank}/{self.dp_size} "
                f"(it was saved by rank {state.get('dp_rank')}/{state.get('dp_size')}); for a resume with another "
                "dp_size pass the states of all ranks (a list, or TokenLoader.merge_states)"
            )
        same_layout = state.get("dp_size") == self.dp_size and state.get("dp_rank") == self.dp_rank
        if not same_layout and len({e[1] for e in state["lanes"]}) > 1:
            raise DataError("loader state was saved mid-step; resume with another dp_size needs a step boundary")
        B = self.cfg.micro_batch_size
        group_rows = []
        for g in range(self.groups):
            rows = {lanes[i][0] for i in self.lane_ids[g * B : (g + 1) * B]}
            if len(rows) != 1:
                raise DataError("loader state was saved mid-step; resume with another dp_size needs a step boundary")
            group_rows.append(rows.pop())
        k = min(group_rows)
        ahead = sum(1 for r in group_rows if r == k + 1)
        if any(r not in (k, k + 1) for r in group_rows) or group_rows != sorted(group_rows, reverse=True):
            raise DataError("loader state was saved mid-step; resume with another dp_size needs a step boundary")
        self._lanes.clear()  # the documents delivered so far; the counters are set below
        for i, lane in enumerate(self.lane_ids):
            self._lanes.set_state(i, *lanes[lane])
        self._micro = k * self.groups + ahead
        for j in list(self._jobs):
            fut = self._jobs.pop(j)[3]
            if fut is not None:
                fut.cancel()
        self._collected = set()
        self.schedule = Schedule(*self._schedule_args)  # a fresh window: the state may point backwards
        first_slot = self._lanes.first_needed() * self.global_batch
        snap = state.get("schedule")
        if snap is not None and int(snap["pos"]) <= first_slot:
            self.schedule.restore(snap)
        self._low_block = first_slot // self.global_batch
        self._low_job = self._layout.of(self._low_block)
        self.schedule.forget(first_slot)
        # Counters: a same-layout resume restores this rank's; an elastic one gives the totals to rank 0.
        st = state["stats"]
        if same_layout or self.dp_rank == 0:
            c = st["counts"]
            self._lanes.counts = (st["docs"], st["split"], st["empty"])
            self._lanes.totals = tuple(int(c.get(k, 0)) for k in ("rows", "pad_tokens", "pad_rows", "utf8_replaced"))
            self._lanes.lang_tokens = [int(x) for x in st["lang_tokens"]]
        else:
            self._lanes.counts, self._lanes.totals = (0, 0, 0), (0, 0, 0, 0)
            self._lanes.lang_tokens = [0] * len(self.langs)

    # ---- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for enc in self._thread_encoders:  # their files close now, not when the last reference goes
            enc.close()
        self._thread_encoders.clear()
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None
        self._jobs.clear()

    def __enter__(self) -> "TokenLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to clean
            pass
