# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.segment-lesion-installed

.PHONY: demo test test-slow test-all lint benchmark clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned, so nothing else pulls a multi-GB build (see ../shared/platform.md)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	# nnU-Net only for its dataset checker; --no-deps keeps torch 2.13.0
	$(BIN)/python -m pip install -q --no-deps nnunetv2 acvl-utils batchgenerators
	$(BIN)/python -m pip install -q pandas scikit-image blosc2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/segment-lesion demo --output demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check SegmentLesion Testing benchmarks

benchmark: $(STAMP)
	$(BIN)/python benchmarks/bench_segment.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
