"""The scores table: Parquet round trip with run metadata, and refusal to mix runs or tokenizers."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from glotta.errors import DataError
from glotta.pruning.cat.table import ScoresMeta, nll_matrix, read_meta, read_scores, write_scores

META = ScoresMeta(run_id="run-a", tokenizer_sha256="ab" * 32, checkpoint_steps=[100, 200], seq_len=256,
                  extra={"tp": 2})


def rows(shard, keys, nll=1.5):
    n = len(keys)
    return {"shard": [shard] * n, "key": keys, "lang": ["el"] * n, "n_tokens": [7] * n, "n_bytes": [30] * n,
            "nll_ckpt_1": [nll] * n, "nll_ckpt_2": [nll - 0.5] * n}


def test_round_trip_keeps_rows_and_metadata(tmp_path):
    write_scores(tmp_path / "s0.parquet", rows("s0.tar", ["a", "b"]), META)
    write_scores(tmp_path / "s1.parquet", rows("s1.tar", ["a"]), META)
    df, meta = read_scores(tmp_path)
    assert meta == META and meta.k == 2
    assert list(df["shard"] + "/" + df["key"]) == ["s0.tar/a", "s0.tar/b", "s1.tar/a"]
    assert df["nll_ckpt_2"].tolist() == [1.0, 1.0, 1.0]
    assert pq.read_schema(tmp_path / "s0.parquet").field("n_tokens").type == pa.int64()
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize("change,needle", [
    ({"run_id": "run-b"}, "run run-b"),
    ({"tokenizer_sha256": "cd" * 32}, "tokenizer cdcdcdcdcdcd"),
    ({"checkpoint_steps": [100, 300]}, "steps [100, 300]"),
])
def test_refuses_tables_from_different_runs(tmp_path, change, needle):
    write_scores(tmp_path / "s0.parquet", rows("s0.tar", ["a"]), META)
    other = ScoresMeta(**{**META.__dict__, **change})
    write_scores(tmp_path / "s1.parquet", rows("s1.tar", ["a"]), other)
    with pytest.raises(DataError, match="scores from different runs") as e:
        read_meta(tmp_path)
    assert needle in str(e.value) and "s1.parquet" in str(e.value)
    # The same check applies across separately given paths.
    (tmp_path / "x").mkdir()
    (tmp_path / "s1.parquet").rename(tmp_path / "x" / "s1.parquet")
    with pytest.raises(DataError, match="scores from different runs"):
        read_scores([tmp_path / "s0.parquet", tmp_path / "x"])


def test_rejects_foreign_parquet_duplicates_and_nan(tmp_path):
    pd.DataFrame({"shard": ["s.tar"], "key": ["a"]}).to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(DataError, match="not a glotta scores table"):
        read_meta(tmp_path / "plain.parquet")
    d = tmp_path / "dup"
    write_scores(d / "s0.parquet", rows("s0.tar", ["a"]), META)
    write_scores(d / "s0b.parquet", rows("s0.tar", ["a"]), META)
    with pytest.raises(DataError, match="s0.tar/a more than once"):
        read_scores(d)
    with pytest.raises(DataError, match="scores not found"):
        read_scores(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\*.parquet scores files"):
        read_scores(tmp_path / "empty")
    n = tmp_path / "nan"
    write_scores(n / "s0.parquet", rows("s0.tar", ["a", "b"], nll=float("nan")), META)
    df, meta = read_scores(n)
    with pytest.raises(DataError, match="scores for s0.tar/a are not finite \\(2 such documents\\)"):
        nll_matrix(df, meta.k)
