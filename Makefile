# hypersphere: `make` builds the environment and runs the whole replication at the chosen PROFILE;
# `make test` runs the test suite. `make help` lists targets and variables.

PROFILE  ?= quick#        smoke (seconds, for tests) | quick (laptop CPU, minutes) | paper (GPUs)
DATA_DIR ?= data#         where datasets live (downloaded ones are git-ignored)
DEVICE   ?= auto#         auto | cpu | cuda | cuda:1 ...
DOWNLOAD ?= false#        true: let torchvision download missing datasets (paper profile)
EXECUTOR ?= local#        local | ray (one Ray task per run; RAY_ADDRESS picks a cluster)
WORKERS  ?= 2#            local executor: runs trained at a time (one CPU thread each)
DATASET  ?= stl10#        for `make data`
SWEEP_ARGS ?=#            extra options for `python -m hypersphere sweep`, e.g. --gpus-per-run 0.25
PYTHON   ?= python3#      interpreter used to create the venv (3.10+)
VENV     ?= .venv
PYTEST_ARGS ?=

BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
BUILD    := build/$(PROFILE)
FIGURES  := figures
SRC      := $(wildcard src/hypersphere/*.py)
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
EXECUTED := $(patsubst notebooks/%.ipynb,$(BUILD)/%.ipynb,$(NOTEBOOKS))
SWEEPS   := $(sort $(wildcard configs/sweeps/$(PROFILE)/*.yaml))
RESULTS  := $(patsubst configs/sweeps/$(PROFILE)/%.yaml,results/$(PROFILE)/%.csv,$(SWEEPS))

.PHONY: all setup data sweep notebooks report test help clean distclean
all: notebooks ## (default) set up, then execute every notebook at PROFILE; figures land in figures/

setup: $(STAMP) ## create .venv (only when missing or pyproject.toml changed) and register its Jupyter kernel

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	$(BIN)/python -m ipykernel install --sys-prefix --name hypersphere --display-name "hypersphere (.venv)" >/dev/null
	@touch $@

sweep: $(RESULTS) ## train every sweep of PROFILE (finished runs are skipped) into results/PROFILE/*.csv

# The sweep command itself skips finished runs, so re-making a table after a code change is cheap.
results/$(PROFILE)/%.csv: configs/sweeps/$(PROFILE)/%.yaml $(SRC) $(STAMP)
	$(BIN)/python -m hypersphere sweep $< --profile $(PROFILE) --executor $(EXECUTOR) --workers $(WORKERS) \
	    --set data_dir=$(abspath $(DATA_DIR)) device=$(DEVICE) download=$(DOWNLOAD) $(SWEEP_ARGS)

data: $(STAMP) ## download DATASET (stl10, cifar10) into DATA_DIR with torchvision, e.g. make data DATASET=stl10
	$(BIN)/python -m hypersphere data $(DATASET) --data-dir $(DATA_DIR)

notebooks: $(EXECUTED) ## execute the notebooks through papermill into build/PROFILE/

# The figure notebooks read the sweep tables; the theory notebook trains nothing and needs none.
$(filter-out $(BUILD)/01_theory.ipynb,$(EXECUTED)): $(RESULTS)

# Each notebook is re-executed when it, the package or the profile's inputs change.
$(BUILD)/%.ipynb: notebooks/%.ipynb $(SRC) $(STAMP)
	@mkdir -p $(BUILD) $(FIGURES)
	$(BIN)/papermill --log-output --request-save-on-cell-execute $< $@.tmp.ipynb -k hypersphere \
	    -p profile $(PROFILE) -p figures_dir $(CURDIR)/$(FIGURES) -p data_dir $(abspath $(DATA_DIR)) \
	    -p device $(DEVICE) -p results_dir $(CURDIR)/results/$(PROFILE)
	@mv $@.tmp.ipynb $@

report: notebooks ## render build/PROFILE/*.ipynb to HTML, with an index of paper items, figures and verdicts
	$(BIN)/python -m hypersphere.report $(BUILD) $(FIGURES) $(BUILD)/report

test: $(STAMP) ## run the test suite (notebooks included, on the smoke profile)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# bench/ is also a folder, so the target must be phony or make would call it up to date.
.PHONY: bench
bench: $(STAMP) ## speed ratios against reference implementations, measured side by side -> bench/results/
	$(BIN)/python bench/run.py --out bench/results

help: ## list targets and variables
	@echo "targets:"; grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo "variables (make VAR=value):"; grep -E '^[A-Z_]+ +\?=' $(MAKEFILE_LIST) | sed -E 's/ *\?= */=/; s/# */\t# /' | awk -F'\t' '{printf "  %-22s %s\n", $$1, $$2}'

clean: ## remove build outputs (executed notebooks, figures); keeps data/ and finished runs
	rm -rf build $(FIGURES)/*.png $(FIGURES)/*.pdf $(FIGURES)/*.csv $(FIGURES)/*.md $(FIGURES)/*.tex $(FIGURES)/*.json

distclean: clean ## also remove the venv, finished runs and results (never data/)
	rm -rf $(VENV) runs results
