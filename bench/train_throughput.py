"""Trainer overhead vs a bare megatron-core loop (CPU), and GPU throughput when CUDA is present.

    python bench/train_throughput.py [--steps 30] [--layers 4] [--hidden 128] [--seq 128]

CPU: the same GPTModel, megatron DDP and optimizer, one process (gloo). "ours" is a full
`glotta.train.train` run (TokenLoader tokenizing real multilingual shards on the fly, document
masks, per-language loss reports, loss all-reduce, spike guard, metrics file); its per-step time
is what the loop measures. "bare" is megatron's minimal loop (zero_grad_buffer -> forward_backward
-> optimizer.step) over the same batches pre-loaded in memory, with a plain masked-mean loss.
Ratio = ours / bare step time (1.00 = no overhead).

GPU (CUDA only): gpt-125m and gpt-1b at seq 2048 through `glotta.train.train` (bench/gpu_check.py
`throughput`): a ~32k SentencePiece vocabulary padded to 32,768, tokenization in 8 loader worker
processes (data loading included, off the step's critical path), micro-batches that fill the GPU
and several per step; tokens/s, TFLOP/s per GPU and MFU against 989 TFLOP/s (H100/H200 dense BF16,
formula in train/flops.py). `--gpu-data DIR` reuses `bench/gpu_check.py prepare DIR` output;
`--gpu-only` skips the CPU comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
import torch  # noqa: E402


def corpus(tmp: Path) -> tuple[Path, Path]:
    import sentencepiece as spm

    from glotta.data import iter_samples, list_shards
    from glotta.data.demo_corpus import build_demo_corpus

    shards = tmp / "shards"
    build_demo_corpus(shards, langs=["en", "de", "ru", "el", "ja", "hi", "ar", "zh"], max_docs_per_lang=60, shard_samples=200)
    lines = [x for p in list_shards(shards) for s in iter_samples(p) for x in s.text.split("\n") if x.strip()]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp / "sp"), vocab_size=1500,
                                   character_coverage=0.98, byte_fallback=True, num_threads=2, minloglevel=2)
    return shards, tmp / "sp.model"


def config(args, run_dir: Path, shards: Path, tok: Path, **model):
    from glotta.train.config import TrainConfig

    return TrainConfig.model_validate({
        "run_dir": str(run_dir), "train_iters": args.steps, "micro_batch_size": args.mbs, "global_batch_size": args.mbs * 2,
        "log_interval": 1, "eval_interval": 0, "checkpoint": {"interval": 10**9, "keep_last": 0},
        "tracking": {"enabled": args.mlflow}, "optim": {"warmup_iters": 2},
        "data": {"train": [str(shards)], "tokenizer": str(tok)},
        "model": {"num_layers": args.layers, "hidden_size": args.hidden, "num_attention_heads": 4, "seq_length": args.seq,
                  "make_vocab_size_divisible_by": 64, **model},
    })


def ours(cfg) -> list[float]:
    from glotta.train import train

    train(cfg)
    rows = [json.loads(x) for x in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["step_time_s"] for r in rows if "step_time_s" in r]


def bare(cfg) -> list[float]:
    """megatron's minimal loop: same model/DDP/optimizer, pre-loaded batches, plain loss."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from glotta.data.loader import TokenLoader
    from glotta.train.model import build_model
    from glotta.train.optim import build_optimizer
    from glotta.train.parallel import destroy_parallel, init_parallel

    dims = init_parallel(cfg.parallel, cfg.seed)
    nmb = cfg.num_microbatches(dims.dp)
    loader = TokenLoader([cfg.data.train[0]], cfg.data.tokenizer, seq_len=cfg.model.seq_length,
                         micro_batch_size=cfg.micro_batch_size, global_batch_size=cfg.global_batch_size)
    it = iter(loader)
    batches = [next(it) for _ in range(cfg.train_iters * nmb)]
    chunks = build_model(cfg.model, dims, loader.vocab_size)
    model, opt, _ = build_optimizer(chunks, cfg.optim, dims, cfg.train_iters, False)
    chunks[0].config.calculate_per_token_loss = False  # megatron's default averaging

    def step(data, m):
        b = next(data)
        out = m(b["tokens"], b["position_ids"], None, labels=b["labels"])

        def loss(o):
            mask = b["loss_mask"].reshape(-1)
            value = (o.reshape(-1) * mask).sum() / mask.sum()
            return value, {"lm loss": value.detach()}
        return out, loss

    data, fb, times = iter(batches), get_forward_backward_func(), []
    for _ in range(cfg.train_iters):
        t = time.perf_counter()
        for m in model:
            m.zero_grad_buffer()
        opt.zero_grad()
        fb(forward_step_func=step, data_iterator=data, model=model, num_microbatches=nmb,
           seq_length=cfg.model.seq_length, micro_batch_size=cfg.micro_batch_size, forward_only=False)
        opt.step()
        times.append(time.perf_counter() - t)
    destroy_parallel()
    return times


def steady(times: list[float]) -> float:
    return statistics.median(times[len(times) // 3:])  # skip warm-up steps


def gpu(args, tmp: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_check import prepare, throughput

    from glotta.train.flops import H100_BF16_PEAK

    print(f"GPU: {torch.cuda.get_device_name()}  (peak assumed {H100_BF16_PEAK / 1e12:.0f} TFLOP/s dense BF16)")
    data = args.gpu_data or tmp / "gpu_data"
    if not (data / "sp.model").is_file():
        prepare(data)
    throughput(data, tmp / "gpu_out", smoke=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--mbs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mlflow", action="store_true", help="also log to MLflow (embedded store) in our run")
    ap.add_argument("--gpu-only", action="store_true", help="skip the CPU overhead comparison")
    ap.add_argument("--gpu-data", type=Path, help="data prepared by `bench/gpu_check.py prepare DIR`")
    args = ap.parse_args()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.gpu_only:
            if not torch.cuda.is_available():
                sys.exit("--gpu-only: no CUDA device")
            gpu(args, tmp)
            return
        shards, tok = corpus(tmp)
        # Alternate the two loops (other load on the machine shifts over time); keep each one's best round.
        t_bare, t_ours = [], []
        for r in range(args.rounds):
            cfg = config(args, tmp / f"ours{r}", shards, tok)
            t_bare.append(steady(bare(cfg)))
            t_ours.append(steady(ours(cfg)))
        t_bare, t_ours = min(t_bare), min(t_ours)
        toks = cfg.global_batch_size * cfg.model.seq_length
        print(f"CPU ({torch.get_num_threads()} threads), {args.layers} layers x {args.hidden} hidden, seq {args.seq}, "
              f"global batch {cfg.global_batch_size} ({cfg.num_microbatches(1)} micro-batches of {args.mbs}), {args.steps} steps, "
              f"best of {args.rounds} alternating rounds (median step after warm-up)")
        print(f"bare megatron-core loop : {1000 * t_bare:8.1f} ms/step  {toks / t_bare:9,.0f} tokens/s")
        print(f"glotta train            : {1000 * t_ours:8.1f} ms/step  {toks / t_ours:9,.0f} tokens/s")
        print(f"overhead ratio (ours / bare): {t_ours / t_bare:.3f}")
        if torch.cuda.is_available():
            gpu(args, tmp)
        else:
            print("GPU: no CUDA device on this machine; tokens/s, TFLOP/s/GPU and MFU for gpt-125m / gpt-1b not measured")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
