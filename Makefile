# Two commands set everything up: `make demo` and `make test` (each creates .venv when missing).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
STAMP := $(VENV)/.glotta-installed

.PHONY: demo test bench install clean cli-docs

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# CPU-only machines get the CPU build of torch (a plain `pip install torch` pulls CUDA wheels).
	@if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(PY) -c "import torch" 2>/dev/null; then \
		$(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/glotta demo

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info core/_native*.so

# docs/cli.md is generated from the CLI (tests/launch/test_cli_docs.py checks it is current).
cli-docs: $(STAMP)
	$(VENV)/bin/typer glotta.launch.cli utils docs --name glotta --output docs/cli.md
