# Each target sets up .venv first (Python 3.11, pinned requirements), so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo bench serve clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m oid_retinanet.demo

bench: $(STAMP)
	$(PY) bench/run_all.py

# The web demo on http://127.0.0.1:8000/ (PORT=N for another port) with the model `make demo` trained, or
# another: make serve SERVE_ARGS="--weights models/x.h5"
serve: $(STAMP)
	$(PY) -m oid_retinanet.serve $(SERVE_ARGS)

clean:
	rm -rf $(VENV) demo_output bench_output
