# Quick start: `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned for development and CI: 2.13.0 has a CPU wheel on our machines,
# while an unpinned torch pulls several GB of CUDA packages.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[test]' $(TORCH_PIN)
	touch $@

demo: $(BIN)/.installed
	$(BIN)/roipool demo

# The lint runs first, so CI (which runs `make test`) fails on lint too.
lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=10

bench: $(BIN)/.installed
	$(BIN)/roipool bench

clean:
	rm -rf $(VENV) build src/*.egg-info
