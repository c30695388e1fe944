"""Tokenizer build and encode speed against plain SentencePiece, on the real demo corpus.

1. build: `glotta.tokenizer.build` (sample from shards + train + card) vs
   `SentencePieceTrainer.train` on the same in-memory sample with the same options.
   Overhead = ours / baseline - 1 (target <= 10%).
2. encode: the `eval` metric pass (encode + per-language counts) vs a bare batched
   `SentencePieceProcessor.encode` of the same lines, in MB/s of UTF-8 text.

    python bench/tokenizer.py [--docs-per-lang 100] [--sample-bytes 1500000] [--vocab-size 8000] [--model-type unigram] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import sentencepiece as spm

from glotta.data.demo_corpus import build_demo_corpus
from glotta.tokenizer.build import BuildConfig, build, trainer_args, train_spm
from glotta.tokenizer.metrics import Vocab, count
from glotta.tokenizer.sample import SampleConfig, draw_sample

LANGS = ["en", "de", "fr", "es", "ru", "el", "ja", "zh", "hi", "ar", "ko", "th", "tr", "pl", "uk", "vi"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs-per-lang", type=int, default=100)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    ap.add_argument("--sample-bytes", type=int, default=1_500_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        build_demo_corpus(shards, langs=LANGS, max_docs_per_lang=args.docs_per_lang, shard_samples=500)
        cfg = BuildConfig(shards=shards, out_dir=Path(tmp) / "ours", vocab_size=args.vocab_size,
                          model_type=args.model_type, force=True,  # measure a real build every time
                          sample=SampleConfig(sample_bytes=args.sample_bytes))
        sample = draw_sample(shards, cfg.sample)
        spm_args = trainer_args(cfg, sorted(sample.langs))
        mb = sum(s.bytes for s in sample.langs.values()) / 1e6
        print(f"sample: {len(sample.lines):,} lines, {mb:.2f} MB, {len(sample.langs)} languages; "
              f"{args.model_type} vocab {args.vocab_size}; {os.cpu_count()} cores")
        ours, base, ours_cpu, base_cpu, cards = [], [], [], [], []
        def ours_run():
            t, c = time.perf_counter(), time.process_time()
            cards.append(build(cfg))
            ours.append(time.perf_counter() - t)
            ours_cpu.append(time.process_time() - c)

        def base_run():
            t, c = time.perf_counter(), time.process_time()
            train_spm(sample.lines, spm_args, str(Path(tmp) / "direct"))
            base.append(time.perf_counter() - t)
            base_cpu.append(time.process_time() - c)

        for i in range(args.repeat):  # alternate the order so warm-up and machine noise hit both alike
            for run in ((ours_run, base_run) if i % 2 == 0 else (base_run, ours_run)):
                run()
        # CPU seconds (all threads of this process) are the steadier figure on a shared machine
        for label, a, b in (("wall", min(ours), min(base)), ("cpu", min(ours_cpu), min(base_cpu))):
            print(f"build   glotta {a:7.2f} s   sentencepiece direct {b:7.2f} s   ratio {a / b:.3f} "
                  f"(overhead {100 * (a / b - 1):+.1f}%, {label} seconds, best of {args.repeat})")
        best = cards[ours.index(min(ours))]["seconds"]
        print(f"        glotta breakdown (wall): sample {best['sample']:.2f} s + train {best['train']:.2f} s")

        sp = spm.SentencePieceProcessor(model_file=str(Path(tmp) / "ours" / "glotta.model"))
        lines = sample.lines
        vocab = Vocab(sp)
        raw, ev = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            sp.encode(lines)
            raw.append(time.perf_counter() - t)
            t = time.perf_counter()
            count(vocab, lines)
            ev.append(time.perf_counter() - t)
        r, e = mb / min(raw), mb / min(ev)
        print(f"encode  eval pass {e:7.2f} MB/s   sentencepiece encode {r:7.2f} MB/s   ratio {e / r:.3f}")


if __name__ == "__main__":
    main()
