# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
# `make demo` installs what the demo needs; `make test` adds the test extras on top.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
DEMO_STAMP := $(VENV)/.segment-lesion-demo
TEST_STAMP := $(VENV)/.segment-lesion-test

.PHONY: demo test test-slow test-all lint benchmark clean

$(DEMO_STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so nothing else pulls a multi-GB build (see ../shared/platform.md)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[demo]'
	touch $(DEMO_STAMP)

$(TEST_STAMP): $(DEMO_STAMP)
	$(PIP) -e '.[demo,test]'
	# nnU-Net only for its dataset checker, deepbet for its brain-extraction networks (engine/brain_mask.py); --no-deps keeps torch 2.13.0
	$(PIP) --no-deps nnunetv2 acvl-utils batchgenerators deepbet==1.0.2
	touch $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/segment-lesion demo --output demo-output

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m slow

test-all: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

lint: $(TEST_STAMP)
	$(BIN)/ruff check SegmentLesion Testing benchmarks
	$(BIN)/ruff format --check SegmentLesion Testing benchmarks

benchmark: $(TEST_STAMP)
	$(BIN)/python benchmarks/bench_segment.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
