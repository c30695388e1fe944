#!/bin/bash
# Prepare what bench/gpu_check.sh needs on a GPU machine without network access (Python 3.12, a CUDA
# build of torch, no megatron-core / pydantic there). Run it here, where PyPI is reachable:
#   bash bench/gpu_wheels.sh
# -> gpu_bundle/wheels/*.whl  (cp312 manylinux x86_64 wheels, about 7 MB)
#    gpu_bundle/data/         (demo-corpus shards, 10 languages, + a ~32k SentencePiece model, ~18 MB)
# gpu_bundle/ is git-ignored; name it in the device call's `carry` so it travels with the tree.
# Versions: the ones this checkout is tested with (.venv), so the GPU runs the same code.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=gpu_bundle/wheels
mkdir -p "$OUT"
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
# glotta's import path for `glotta train` beyond what the GPU image has (torch, numpy, pyyaml, typer,
# rich, packaging, pybind11, setuptools are there): megatron-core, pydantic with its compiled core,
# sentencepiece (brought along in case the image lacks it), webdataset, pybind11 (build only).
PKGS=(
  "megatron-core==$(ver megatron-core)"
  "pydantic==$(ver pydantic)"
  "pydantic-core==$(ver pydantic-core)"
  "annotated-types==$(ver annotated-types)"
  "typing-inspection==$(ver typing-inspection)"
  "typing-extensions==$(ver typing-extensions)"
  "sentencepiece==$(ver sentencepiece)"
  "webdataset==$(ver webdataset)"
  "braceexpand==$(ver braceexpand)"
  "pybind11>=2.12"  # builds glotta's C++ loader there (pure Python; the image's own may be older)
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$OUT" "${PKGS[@]}" 2>&1 | grep -v "^WARNING: Location" || true
[ -f gpu_bundle/data/sp.model ] || "$PY" bench/gpu_check.py prepare gpu_bundle/data
ls "$OUT"
du -sh gpu_bundle/*
