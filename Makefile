# `make demo` and `make test` work on a fresh machine: they create .venv, install the CPU
# build of torch first (so the package's loose `torch>=2.3` never pulls a CUDA build), then
# the package. Override TORCH to install another build, e.g. TORCH='torch==2.13.0+cu128'.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
DEMO   ?= demo
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: demo test install clean

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

# synth -> train InfoNCE and SigLIP -> evaluate on the test split -> markdown table
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/clarion synth $(DEMO)/data --seed 0 -q
	$(BIN)/clarion train --config configs/demo.yaml --train $(DEMO)/data/train.csv --val $(DEMO)/data/val.csv --objective infonce --out $(DEMO)/runs/infonce --cache-dir $(DEMO)/cache
	$(BIN)/clarion train --config configs/demo.yaml --train $(DEMO)/data/train.csv --val $(DEMO)/data/val.csv --objective siglip --out $(DEMO)/runs/siglip --cache-dir $(DEMO)/cache
	$(BIN)/clarion evaluate $(DEMO)/runs/infonce --data $(DEMO)/data/test.csv --json $(DEMO)/runs/infonce/test.json -q > /dev/null
	$(BIN)/clarion evaluate $(DEMO)/runs/siglip --data $(DEMO)/data/test.csv --json $(DEMO)/runs/siglip/test.json -q > /dev/null
	$(BIN)/python scripts/results_table.py $(DEMO)/runs/infonce/test.json $(DEMO)/runs/siglip/test.json

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info src/*.egg-info
