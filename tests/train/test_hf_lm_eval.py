"""lm-evaluation-harness on an exported model, offline, with a task defined by a local YAML file over
a local JSONL file (docs/model.md#evaluation): its `hf` model type loads the export-hf directory,
and the log-likelihood it reports for every document equals the one computed with transformers
directly and with glotta's own model from the checkpoint (within 1e-4, fp32); its bits per byte
equals ours from those sums."""
from __future__ import annotations

import json
import math

import pytest
import torch

TOL = 1e-4


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, and the datasets cache (the JSONL converted to Arrow) inside the test's folder."""
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(k, "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


def documents(train_data, sp, per_lang: int = 2) -> list[dict]:
    """Held-out lines of every language, 12..100 tokens (one window of the 128-token model)."""
    from glotta.data import iter_samples, list_shards

    seen: dict[str, int] = {}
    docs = []
    for shard in list_shards(train_data.valid):
        for s in iter_samples(shard):
            for line in s.text.split("\n"):
                if seen.get(s.lang, 0) < per_lang and 12 <= len(sp.encode(line)) <= 100:
                    seen[s.lang] = seen.get(s.lang, 0) + 1
                    docs.append({"lang": s.lang, "text": line})
    return docs


def task_dir(tmp_path, docs: list[dict]):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "glotta_heldout.yaml").write_text(f"""task: glotta_heldout
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
  - metric: word_perplexity
""")
    return d


def test_lm_eval_harness_on_an_export(train_data, offline, tmp_path):
    import sentencepiece as spm
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from test_hf_export import model_cfg, write_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glotta.train.hf_export import ExportConfig, export_hf
    from glotta.train.inference import full_logits, load_model
    from glotta.train.parallel import destroy_parallel

    sp = spm.SentencePieceProcessor(model_file=str(train_data.tokenizer))
    ck = write_checkpoint(tmp_path / "ck", model_cfg(num_query_groups=2, tie_embeddings=False), train_data.tokenizer,
                          sp.get_piece_size(), seed=7)
    export_hf(ExportConfig(checkpoint=ck, out=tmp_path / "hf"))
    docs = documents(train_data, sp)
    assert len({d["lang"] for d in docs}) >= 8
    tasks = TaskManager(include_path=str(task_dir(tmp_path, docs)), include_defaults=False)  # ours only: fast
    out = simple_evaluate(model="hf", model_args={"pretrained": str(tmp_path / "hf"), "dtype": "float32"},
                          tasks=["glotta_heldout"], task_manager=tasks, device="cpu", batch_size=4, log_samples=True,
                          bootstrap_iters=0)
    samples = sorted(out["samples"]["glotta_heldout"], key=lambda s: s["doc_id"])
    harness = [float(s["resps"][0][0]) for s in samples]
    assert [s["doc"]["text"] for s in samples] == [d["text"] for d in docs]

    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id  # the harness' rolling prefix
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    model, meta = load_model(ck)
    vocab = meta["vocab_size"]
    try:
        for d, got in zip(docs, harness):
            ids = [prefix] + sp.encode(d["text"])
            assert tok(d["text"], add_special_tokens=False)["input_ids"] == ids[1:]
            x = torch.tensor([ids])
            with torch.no_grad():
                logp = float(torch.log_softmax(hf(x).logits.double(), -1)[0, :-1].gather(1, x[0, 1:, None]).sum())
            # glotta's own model over the real vocabulary (the export has no padding rows)
            ours = float(torch.log_softmax(full_logits(model, x)[..., :vocab].double(), -1)[0, :-1].gather(1, x[0, 1:, None]).sum())
            assert abs(got - logp) <= TOL and abs(got - ours) <= TOL, (d, got, logp, ours)
    finally:
        destroy_parallel()
    nbytes = sum(len(d["text"].encode()) for d in docs)
    bpb = -sum(harness) / nbytes / math.log(2)
    assert abs(out["results"]["glotta_heldout"]["bits_per_byte,none"] - bpb) <= TOL
