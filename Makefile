# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# two workers: many tests are single-threaded Python (the Triton interpreter); see tests/conftest.py
PYTEST_WORKERS ?= 2

.PHONY: demo test test-full lint venv natten mm clean gpu-check na-cpu

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=68,<80" wheel
	# torch first, pinned to the releases this project is tested with (they install from local disk here)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e ".[dev,onnx,openvino]"
	touch $(STAMP)

venv: $(STAMP)

# natten installs as pure Python on CPU; it is an optional backend, tested when present.
$(VENV)/.natten: $(STAMP)
	$(PIP) install -q --no-build-isolation natten
	touch $@

natten: $(VENV)/.natten

# The mm extra: mmcv is built from source (no wheel exists for torch 2.14); pip caches the built wheel.
mm: $(STAMP)
	PY=$(PY) bash tools/install_mm.sh

# The compiled NA CPU kernel (visionattn.kernels._na_cpu): built once into ~/.cache/visionattn; optional, the
# torch path runs where no compiler is.
na-cpu: $(STAMP)
	$(PY) -m visionattn.kernels._na_cpu || echo "NA CPU kernel not built: NA on CPU runs on the torch path"

demo: $(STAMP) na-cpu
	$(PY) tools/demo.py

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP) natten mm lint na-cpu
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not full" $(PYTEST_ARGS)

test-full: $(STAMP) natten mm lint na-cpu
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The prepared GPU check (issue 20): run on a GPU machine as it is (no package registry there: no venv step).
GPU_CHECK_ARGS ?=
gpu-check:
	bash tools/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
