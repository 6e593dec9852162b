# `make demo` and `make test` work on a fresh machine: they create .venv, install the CPU
# build of torch first (so the package's loose `torch>=2.3` never pulls a CUDA build), then
# the package. Override TORCH to install another build, e.g. TORCH='torch==2.13.0+cu128'.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
# extras for `make test`; CI adds browser (Playwright), faiss, minilm, tensorboard and wandb so no test skips there
EXTRAS ?= dev
DEMO   ?= demo
# `make demo`: configs/demo.yaml (3 epochs); `make demo-full`: configs/demo_full.yaml (10 epochs)
RECIPE ?= configs/demo.yaml
# SVR rows use their defaults: both sides, dynamic radius.
DEMO_OBJECTIVES ?= infonce infonce+svr siglip siglip+svr
# runs trained side by side, one CPU thread each (on 2 cores this beats one run with 2 threads)
DEMO_JOBS ?= 2
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
comma  := ,
EXTRAS_STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
DEMO_RESULTS := $(foreach o,$(DEMO_OBJECTIVES),$(DEMO)/runs/$(o)/test.json)

.PHONY: demo demo-full demo-runs test test-kernels install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e . "$(TORCH)"
	touch $@

$(VENV)/.installed-%: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]" "$(TORCH)"
	touch $@

test: $(EXTRAS_STAMP)
	$(BIN)/python -m pytest -q

# only the fused Triton kernels' tests (part of `make test` too): under Triton's CPU interpreter,
# or natively where CUDA is available (tests/conftest.py sets TRITON_INTERPRET=1 without CUDA)
test-kernels: $(EXTRAS_STAMP)
	$(BIN)/python -m pytest -q tests/test_fused.py

# synth -> train each objective (DEMO_JOBS at a time) -> evaluate on the test split -> markdown table
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/clarion synth $(DEMO)/data --seed 0 -q
	mkdir -p $(DEMO)/runs
	$(MAKE) --no-print-directory -j$(DEMO_JOBS) demo-runs
	@echo
	@$(BIN)/python scripts/results_table.py $(DEMO_RESULTS)
	@echo
	@echo "Search the benchmark's clips with the InfoNCE model just trained (then open http://127.0.0.1:8000/):"
	@echo "  $(BIN)/clarion index build $(DEMO)/data/audio --model $(DEMO)/runs/infonce --out $(DEMO)/index"
	@echo "  $(BIN)/clarion serve $(DEMO)/index"

demo-full:
	$(MAKE) --no-print-directory demo RECIPE=configs/demo_full.yaml

demo-runs: $(DEMO_RESULTS)

$(DEMO)/runs/%/test.json:
	OMP_NUM_THREADS=$(if $(filter 1,$(DEMO_JOBS)),2,1) $(BIN)/clarion train -q --config $(RECIPE) \
	  --train $(DEMO)/data/train.csv --val $(DEMO)/data/val.csv \
	  --objective $* --out $(DEMO)/runs/$* --cache-dir $(DEMO)/cache > $(DEMO)/runs/$*.log 2>&1 \
	  || { tail -20 $(DEMO)/runs/$*.log; exit 1; }
	$(BIN)/clarion evaluate $(DEMO)/runs/$* --data $(DEMO)/data/test.csv --json $@ -q > /dev/null
	@echo "trained and evaluated $*"

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info src/*.egg-info
