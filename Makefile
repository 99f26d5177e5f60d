# The two README commands: `make smoke` (install + run the smoke suite headless) and
# `make test` (install + run the tests). TORCH pins the local CPU build; a GPU user passes
# TORCH=torch (or any CUDA build) and the metadata's range accepts it.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# The tests cover the PEFT bridge too, so the dev install brings the `peft` extra.
EXTRAS ?= dev,peft

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
