# hypersphere: `make` builds the environment and runs the whole replication at the chosen PROFILE;
# `make test` runs the test suite. `make help` lists targets and variables.

PROFILE  ?= quick#        a profile of configs/profiles/: smoke (seconds, for tests) | quick (laptop CPU) | paper (GPUs)
DATA_DIR ?= data#         where datasets live (downloaded ones are git-ignored)
DEVICE   ?= auto#         auto | cpu | cuda | cuda:1 ...
DOWNLOAD ?= false#        true: let torchvision download missing datasets (paper profile)
EXECUTOR ?= local#        local | torchrun (DDP, GPUs per run from SWEEP_ARGS --gpus-per-run) | ray (RAY_ADDRESS picks a cluster)
WORKERS  ?=#              local executor: runs trained at a time (default: the profile's; auto: all cores)
DATASET  ?= stl10#        for `make data`
NAME     ?=#              for `make profile-new NAME=mystudy [FROM=quick]`
FROM     ?= quick
SWEEP_ARGS ?=#            extra options for `python -m hypersphere sweep`, e.g. --gpus-per-run 0.25 --eval probe=adam
PYTHON   ?= python3#      interpreter used to create the venv (3.10+)
VENV     ?= .venv
PYTEST_ARGS ?=

BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
HS       := $(BIN)/python -m hypersphere
# The profile file names its sweeps on one line, `sweeps: [a, b]`: read here without Python so that the
# targets are known before the environment exists; a missing file or line stops make in one line.
PROFILE_FILE := configs/profiles/$(PROFILE).yaml
NO_PROFILE_GOALS := setup test lint bench gpu-check rehearse help clean distclean profile-new data
ifneq ($(filter-out $(NO_PROFILE_GOALS),$(or $(MAKECMDGOALS),all)),)
ifeq ($(wildcard $(PROFILE_FILE)),)
$(error no profile $(PROFILE): $(PROFILE_FILE) does not exist; pick one of configs/profiles/ or `make profile-new NAME=$(PROFILE)`)
endif
ifeq ($(shell grep -c '^sweeps: *\[.*\]' $(PROFILE_FILE)),0)
$(error $(PROFILE_FILE) has no line `sweeps: [a, b]`; name its sweeps of configs/sweeps/$(PROFILE)/ on one line (`sweeps: []` for none))
endif
endif
SWEEP_NAMES := $(shell sed -n 's/^sweeps: *\[\(.*\)\]/\1/p' $(PROFILE_FILE) 2>/dev/null | tr -d ',')
# a profile may read another's sweep files (`sweeps_from: quick`), and executes the notebooks it sizes (`  NN_name:`)
SWEEP_DIR := configs/sweeps/$(or $(shell sed -n 's/^sweeps_from: *\([A-Za-z0-9_-]*\).*/\1/p' $(PROFILE_FILE) 2>/dev/null),$(PROFILE))
NOTEBOOK_NAMES := $(shell sed -n 's/^  \([0-9][0-9]_[A-Za-z0-9_]*\):.*/\1/p' $(PROFILE_FILE) 2>/dev/null)
BUILD    := build/$(PROFILE)
SRC      := $(wildcard src/hypersphere/*.py src/hypersphere/*/*.py)
EXECUTED := $(patsubst %,$(BUILD)/%.ipynb,$(NOTEBOOK_NAMES))
RESULTS  := $(patsubst %,results/$(PROFILE)/%.csv,$(SWEEP_NAMES))
WORKERS_ARG := $(if $(WORKERS),--workers $(WORKERS))

.PHONY: all setup data sweep notebooks report publish profile-new test lint help clean distclean images depth moco sentences beyond decide
all: notebooks ## (default) set up, then train, evaluate and execute every notebook at PROFILE

# One target per domain: its sweeps and notebooks (each fits the quick profile's 15-minute budget on 2 cores).
images: $(patsubst %,$(BUILD)/%.ipynb,01_theory 02_hypersphere_2d 03_metrics_vs_accuracy 04_weighting 05_finetuning 06_table1) ## the image domain: theory, Figs. 3, 4, 5a, 7, 8 and Table 1
depth: $(BUILD)/07_depth.ipynb ## the depth domain: Fig. 5b and Table 2
moco: $(BUILD)/08_moco.ipynb ## MoCo (queue + EMA key encoder): Fig. 9a, Table 3 and Table 5's status
sentences: $(BUILD)/09_sentences.ipynb ## the sentence domain: Fig. 9b and Table 4
beyond: $(BUILD)/10_beyond.ipynb ## beyond the paper: which label-free statistic picks the best encoder, per domain

# The seeds each undecided comparison needs, fixed in advance (two stages; `make` first, so the first stage is cached).
decide: ## Fig. 8 and Tables 1-3 judged at the seeds a two-stage design plans (32 minutes on 2 cores after `make`)
	$(MAKE) notebooks PROFILE=decide

setup: $(STAMP) ## create .venv (only when missing or pyproject.toml changed) and register its Jupyter kernel

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	$(BIN)/python -m ipykernel install --sys-prefix --name hypersphere --display-name "hypersphere (.venv)" >/dev/null
	@touch $@

sweep: $(RESULTS) ## train and evaluate every sweep of PROFILE (finished work is skipped) into results/PROFILE/*.csv

# The sweep command itself skips finished runs and evaluations, so re-making a table after a code change is cheap.
results/$(PROFILE)/%.csv: $(SWEEP_DIR)/%.yaml $(PROFILE_FILE) $(SRC) $(STAMP)
	$(HS) sweep $< --profile $(PROFILE) --executor $(EXECUTOR) $(WORKERS_ARG) \
	    --set data_dir=$(abspath $(DATA_DIR)) device=$(DEVICE) download=$(DOWNLOAD) $(SWEEP_ARGS)

data: $(STAMP) ## download DATASET (stl10, cifar10) into DATA_DIR with torchvision, e.g. make data DATASET=stl10
	$(HS) data $(DATASET) --data-dir $(DATA_DIR)

notebooks: $(EXECUTED) ## execute the notebooks at PROFILE into build/PROFILE/; figures land in figures/PROFILE/

# The figure notebooks read the sweep tables; the theory notebook trains nothing and needs none.
RESULT = results/$(PROFILE)/$(1).csv
$(BUILD)/02_hypersphere_2d.ipynb: $(call RESULT,dim2)
$(BUILD)/03_metrics_vs_accuracy.ipynb $(BUILD)/06_table1.ipynb: $(call RESULT,cloud)
$(BUILD)/06_table1.ipynb: $(call RESULT,curves)
$(BUILD)/04_weighting.ipynb: $(call RESULT,lambda)
$(BUILD)/05_finetuning.ipynb: $(call RESULT,finetune)
$(BUILD)/07_depth.ipynb: $(call RESULT,depth)
$(BUILD)/08_moco.ipynb: $(call RESULT,moco) $(filter $(call RESULT,imagenet),$(RESULTS))
$(BUILD)/09_sentences.ipynb: $(call RESULT,sentences)
$(BUILD)/10_beyond.ipynb: $(filter $(foreach s,cloud depth moco sentences beyond,$(call RESULT,$(s))),$(RESULTS))
$(BUILD)/11_decide.ipynb: $(RESULTS)

# Each notebook is re-executed when it, the package or the profile change (parameters: notebook.py).
$(BUILD)/%.ipynb: notebooks/%.ipynb $(PROFILE_FILE) $(SRC) $(STAMP)
	$(HS) notebook $< --profile $(PROFILE) --data-dir $(DATA_DIR) --device $(DEVICE)

report: notebooks ## render build/PROFILE/*.ipynb to HTML, with an index of paper items, figures and verdicts
	$(HS) report --profile $(PROFILE)

publish: report ## after `make`: copy the executed notebooks, figures and verdicts with an index into docs/PROFILE/
	$(HS) publish --profile $(PROFILE)

profile-new: ## copy profile FROM (default quick) and its sweeps to a new profile NAME to edit
	@test -n "$(NAME)" || { echo "usage: make profile-new NAME=mystudy [FROM=quick]"; exit 2; }
	$(HS) profile new $(NAME) --from $(FROM)

test: $(STAMP) ## run the test suite (notebooks included, on the smoke profile)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff's linter and format check on src, tests and bench (pyproject.toml; tests/test_lint.py runs both)
	$(BIN)/python -m ruff check src tests bench
	$(BIN)/python -m ruff format --check src tests bench

# bench/ is also a folder, so the target must be phony or make would call it up to date.
.PHONY: bench
bench: $(STAMP) ## speed ratios against reference implementations, measured side by side -> bench/results/
	$(BIN)/python bench/run.py --out bench/results

.PHONY: gpu-check
gpu-check: $(STAMP) ## the one prepared GPU check (8 minutes or less on one GPU): every paper path, sweep costs -> bench/results/
	$(BIN)/python bench/run.py --cuda-only --out bench/results

.PHONY: rehearse
rehearse: $(STAMP) ## the paper profile on this CPU at miniature size (5 minutes): every sweep's recipes, every notebook -> build/rehearse/
	$(HS) rehearse --profile paper --out build/rehearse

help: ## list targets and variables
	@echo "targets:"; grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo "variables (make VAR=value):"; grep -E '^[A-Z_]+ +\?=' $(MAKEFILE_LIST) | sed -E 's/ *\?= */=/; s/# */\t# /' | awk -F'\t' '{printf "  %-22s %s\n", $$1, $$2}'

clean: ## remove build outputs (executed notebooks, figures); keeps data/ and finished runs
	rm -rf build figures/*/

distclean: clean ## also remove the venv, finished runs and results (never data/)
	rm -rf $(VENV) runs results
