# Each target sets up .venv first (Python 3.11, pinned requirements), so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast lint demo bench bench-scale keras-retinanet-venv serve clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-export.txt requirements-cluster.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

# The edit-test loop: every test but those marked slow (training, the demo, the browser, the card's end to end).
test-fast: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow" tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m oid_retinanet.demo

# bench_model's baseline, keras-retinanet 1.0.0 on TensorFlow 2.15.1, lives in its own venv (about 1.3 GB); when it
# cannot be installed the benchmarks still run, with the recorded keras-retinanet time instead.
KR_VENV := .venv-keras-retinanet
KR_STAMP := $(KR_VENV)/.installed

keras-retinanet-venv: $(KR_STAMP)

$(KR_STAMP): bench/keras_retinanet/requirements.txt
	$(PYTHON) -m venv $(KR_VENV)
	$(KR_VENV)/bin/python -m pip install --quiet -r bench/keras_retinanet/requirements.txt
	$(KR_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation keras-resnet==0.2.0 keras-retinanet==1.0.0
	touch $(KR_STAMP)

bench: $(STAMP)
	$(MAKE) keras-retinanet-venv || echo "keras-retinanet baseline venv not installed: bench_model uses the recorded time"
	$(PY) bench/run_all.py

# Every stage at Open Images' real counts (about an hour on 2 cores, ~10 GB of disk while it runs, removed after):
# the "Full scale" section of BENCHMARKS.md. FRACTION=0.01 runs it at 1% of the counts; STAGES="stage4 metric"
# measures those stages only (their rows replace the report's).
bench-scale: $(STAMP)
	$(PY) bench/full_scale.py --fraction $(or $(FRACTION),1) $(if $(STAGES),--stages $(STAGES))

# The web demo on http://127.0.0.1:8000/ (PORT=N for another port) with the model `make demo` trained, or
# another: make serve SERVE_ARGS="--weights models/x.h5"
serve: $(STAMP)
	$(PY) -m oid_retinanet.serve $(SERVE_ARGS)

clean:
	rm -rf $(VENV) $(KR_VENV) demo_output bench_output
