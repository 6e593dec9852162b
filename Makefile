# `make demo` and `make test` work on a fresh machine: they create .venv, install the CPU
# build of torch first (so the package's loose `torch>=2.3` never pulls a CUDA build), then
# the package. Override TORCH to install another build, e.g. TORCH='torch==2.13.0+cu128'.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
DEMO   ?= demo
# SVR rows use their defaults: both sides, dynamic radius.
DEMO_OBJECTIVES ?= infonce infonce+svr siglip siglip+svr
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: demo test test-kernels install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e . "$(TORCH)"
	touch $@

$(DEVSTAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev]" "$(TORCH)"
	touch $@

test: $(DEVSTAMP)
	$(BIN)/python -m pytest -q

# only the fused Triton kernels' tests (part of `make test` too): under Triton's CPU interpreter,
# or natively where CUDA is available (tests/conftest.py sets TRITON_INTERPRET=1 without CUDA)
test-kernels: $(DEVSTAMP)
	$(BIN)/python -m pytest -q tests/test_fused.py

# synth -> train InfoNCE and SigLIP -> evaluate on the test split -> markdown table
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/clarion synth $(DEMO)/data --seed 0 -q
	for objective in $(DEMO_OBJECTIVES); do \
	  $(BIN)/clarion train --config configs/demo.yaml --train $(DEMO)/data/train.csv --val $(DEMO)/data/val.csv \
	    --objective $$objective --out $(DEMO)/runs/$$objective --cache-dir $(DEMO)/cache || exit 1; \
	  $(BIN)/clarion evaluate $(DEMO)/runs/$$objective --data $(DEMO)/data/test.csv \
	    --json $(DEMO)/runs/$$objective/test.json -q > /dev/null || exit 1; \
	done
	$(BIN)/python scripts/results_table.py $(foreach o,$(DEMO_OBJECTIVES),$(DEMO)/runs/$(o)/test.json)

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info src/*.egg-info
