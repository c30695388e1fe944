"""Trainer overhead vs a bare megatron-core loop (CPU), and GPU throughput when CUDA is present.

    python bench/train_throughput.py [--steps 30] [--layers 4] [--hidden 128] [--seq 128]

CPU: the same GPTModel, megatron DDP and optimizer, one process (gloo). "ours" is a full
`glotta.train.train` run (TokenLoader tokenizing real multilingual shards on the fly, document
masks, per-language loss reports, loss all-reduce, spike guard, metrics file); its per-step time
is what the loop measures. "bare" is megatron's minimal loop (zero_grad_buffer -> forward_backward
-> optimizer.step) over the same batches pre-loaded in memory, with a plain masked-mean loss.
Ratio = ours / bare step time (1.00 = no overhead).

GPU (CUDA only): gpt-125m and gpt-1b shapes through `glotta.train.train`, printing tokens/s,
TFLOP/s per GPU and MFU against 989 TFLOP/s (H100/H200 dense BF16); formula in train/flops.py.
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


def gpu(args, tmp: Path, shards: Path, tok: Path) -> None:
    from glotta.train.flops import H100_BF16_PEAK

    print(f"GPU: {torch.cuda.get_device_name()}  (peak assumed {H100_BF16_PEAK / 1e12:.0f} TFLOP/s dense BF16)")
    import yaml

    for name in ("gpt-125m", "gpt-1b"):
        raw = yaml.safe_load(Path(__file__).resolve().parent.parent.joinpath("configs", f"{name}.yaml").read_text())
        m = raw["model"]
        args2 = argparse.Namespace(**{**vars(args), "layers": m["num_layers"], "hidden": m["hidden_size"], "seq": m["seq_length"],
                                      "mbs": raw["micro_batch_size"]})
        cfg = config(args2, tmp / name, shards, tok, num_attention_heads=m["num_attention_heads"],
                     num_query_groups=m.get("num_query_groups"), tie_embeddings=m["tie_embeddings"])
        ours(cfg)
        rows = [json.loads(x) for x in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "tokens_per_s" in r][len(rows) // 3:]
        tps = statistics.median(r["tokens_per_s"] for r in rows)
        tfl = statistics.median(r["tflops_per_gpu"] for r in rows)
        mfu = statistics.median(r.get("mfu", float("nan")) for r in rows)
        print(f"{name}: {tps:,.0f} tokens/s  {tfl:.1f} TFLOP/s/GPU  MFU {100 * mfu:.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--mbs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mlflow", action="store_true", help="also log to MLflow (embedded store) in our run")
    args = ap.parse_args()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
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
            gpu(args, tmp, shards, tok)
        else:
            print("GPU: no CUDA device on this machine; tokens/s, TFLOP/s/GPU and MFU for gpt-125m / gpt-1b not measured")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
