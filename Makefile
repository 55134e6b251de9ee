# fedsynth: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv and install what they need on a fresh machine with Python 3.11 and make;
# a second run installs nothing (the stamp file is newer than pyproject.toml).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: demo test test-unit lint typecheck bench clean install

install: $(STAMP)

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so that nothing later pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev,eval]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedsynth demo

# One thread per BLAS/OpenMP pool: on 2 cores, spinning pools (sklearn's OpenMP, OpenBLAS) slow
# tests twentyfold while the suite's broker and aggregator processes are busy.
THREADS := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

# Test processes: most of the suite's time is spent waiting (brokers, subprocesses, deadlines),
# so three processes share two cores well; each gets one test at a time, slowest first
# (tests/conftest.py). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 3

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(THREADS) $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --maxschedchunk 1

test-unit: $(STAMP)
	$(THREADS) $(PY) -m pytest -q tests/unit tests/property tests/known_answer

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .fedsynth build *.egg-info
