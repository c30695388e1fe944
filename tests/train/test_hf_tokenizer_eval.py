"""The exported tokenizer (AutoTokenizer, offline) encodes like SentencePiece on every language of the
demo corpus; held-out loss and bits per byte through the HF model equal glotta's own within 1e-4."""
from __future__ import annotations

import pytest
import sentencepiece as spm

from glotta.data import iter_samples, list_shards


def demo_texts(shards, max_docs: int = 1000) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in list_shards(shards):
        for s in iter_samples(p):
            if len(out.setdefault(s.lang, [])) < max_docs:
                out[s.lang].append(s.text)
    return out


def float32_tie(sp, a: list[int], b: list[int]) -> bool:
    """Both segmentations are optimal up to float32 rounding: SentencePiece's Viterbi keeps a float32
    running sum of piece scores over the whole line, tokenizers a float64 one, so on long lines two
    paths whose totals differ by less than the float32 rounding bound of that sum may swap."""
    import itertools

    def partial_sums(ids):
        return list(itertools.accumulate(sp.get_score(i) for i in ids))

    bound = 2.0**-24 * sum(abs(x) for x in partial_sums(a) + partial_sums(b))
    total = lambda ids: sum(sp.get_score(i) for i in ids)  # noqa: E731
    return sp.decode(a) == sp.decode(b) and abs(total(a) - total(b)) <= bound


def first_difference(sp, got: list[int], want: list[int]) -> tuple:
    i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return i, [sp.id_to_piece(x) for x in got[i - 2:i + 4]], [sp.id_to_piece(x) for x in want[i - 2:i + 4]]


@pytest.fixture(scope="module")
def tokenizers(train_data, demo_shards, tmp_path_factory):
    """The trainer fixture's model (unigram, nmt_nfkc) and glotta's default build settings
    (identity normalisation, split digits, whitespace pieces) as unigram and as BPE."""
    from glotta.tokenizer.build import BuildConfig, trainer_args

    root = tmp_path_factory.mktemp("hf_tok")
    lines = [x for texts in demo_texts(demo_shards, 40).values() for t in texts for x in t.split("\n") if x.strip()]
    out = {"unigram_nmt_nfkc": train_data.tokenizer}
    for kind in ("unigram", "bpe"):
        args = trainer_args(BuildConfig(vocab_size=1200, model_type=kind), [])
        args.update(sentence_iterator=iter(lines), model_prefix=str(root / kind), num_threads=2, minloglevel=2,
                    character_coverage=0.995)
        spm.SentencePieceTrainer.train(**args)
        out[f"{kind}_identity"] = root / f"{kind}.model"
    return out


@pytest.mark.parametrize("name", ["unigram_nmt_nfkc", "unigram_identity", "bpe_identity"])
def test_exported_tokenizer_encodes_like_sentencepiece(name, tokenizers, demo_shards, tmp_path):
    from transformers import AutoTokenizer

    from glotta.train.hf_tokenizer import write_hf_tokenizer

    path = tokenizers[name]
    report = write_hf_tokenizer(path, tmp_path, max_length=128)
    assert report["fast_tokenizer"], report
    hf = AutoTokenizer.from_pretrained(tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    texts = demo_texts(demo_shards, 40)
    assert len(texts) == 10
    for lang, docs in texts.items():
        lines = [x for d in docs for x in d.split("\n")] + docs  # single lines and whole documents
        got = hf(lines, add_special_tokens=False)["input_ids"]
        want = sp.encode(lines)
        differ = [(x, g, w) for x, g, w in zip(lines, got, want) if g != w]
        if name.startswith("unigram"):  # near-ties (float32 vs float64 sums of piece scores) only
            assert all(float32_tie(sp, g, w) for _, g, w in differ), (lang, [
                (first_difference(sp, g, w), sum(map(sp.get_score, g)) - sum(map(sp.get_score, w)), sp.decode(g) == sp.decode(w))
                for _, g, w in differ[:3]])
            assert len(differ) <= 0.02 * len(lines), (lang, len(differ), len(lines))
        else:
            assert not differ, (lang, len(differ), [first_difference(sp, g, w) for _, g, w in differ[:3]])
        assert hf.decode(got[0]) == sp.decode(got[0])
    eos = sp.eos_id()
    assert hf.eos_token_id == eos and hf("Hallo")["input_ids"] == sp.encode("Hallo")  # no BOS/EOS added


def test_heldout_loss_and_bpb_equal_through_hf(train_data, tmp_path):
    """`glotta model eval-hf`: per-language held-out loss and bpb, glotta vs the exported model."""
    import json

    from test_hf_export import model_cfg, write_checkpoint
    from typer.testing import CliRunner

    from glotta.launch.cli import app
    from glotta.train.hf_export import ExportConfig, export_hf

    ck = write_checkpoint(tmp_path / "ck", model_cfg(num_query_groups=2, tie_embeddings=False, seq_length=64),
                          train_data.tokenizer, 1500, seed=5)
    export_hf(ExportConfig(checkpoint=ck, out=tmp_path / "hf"))
    r = CliRunner().invoke(app, ["model", "eval-hf", str(ck), "--hf", str(tmp_path / "hf"), "--shards",
                                 str(train_data.valid), "--max-docs", "10", "--max-windows", "2", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout[r.stdout.index("["):])
    assert len(rows) == 10
    for row in rows:
        assert row["max_abs_diff"] <= 1e-4 and abs(row["glotta_bpb"] - row["hf_bpb"]) <= 1e-4, row
        assert row["glotta_loss_padded"] > row["glotta_loss"]  # padding rows take mass in the trainer's softmax
