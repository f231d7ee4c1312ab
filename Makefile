# Two commands do everything on a fresh machine:  make smoke  (train the default recipe)  and  make test.
# torch is pinned first so pip takes the local CPU wheel here; on a CUDA Linux box the same pin is the CUDA build.
# Override for another build, e.g.  make test TORCH=torch==2.14.1
PY ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.ready: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH) -e '.[dev]'
	touch $@

setup: $(VENV)/.ready

smoke: $(VENV)/.ready
	$(BIN)/python -m train fit --config recipes/smoke.yaml

test: $(VENV)/.ready
	$(BIN)/python -m pytest

.PHONY: setup smoke test
