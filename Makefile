# robinterp: `make reproduce` runs the pipeline, `make test` runs the tests. `make` alone lists targets.
PROFILE ?= default
DEVICE  ?= auto
VENV    ?= .venv
PY      := $(VENV)/bin/python

.DEFAULT_GOAL := help
.PHONY: help setup hooks data reproduce test test-fast figures lint clean-runs gpu-check

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-11s %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=$(PROFILE) DEVICE=$(DEVICE)"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $$($(PY) -c "import sys; t = __import__('tomllib' if sys.version_info >= (3, 11) else 'pip._vendor.tomli', fromlist=['load']); print(*t.load(open('pyproject.toml', 'rb'))['tool']['robinterp']['no-deps'])")
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

setup: $(VENV)/.installed  ## create .venv and install robinterp with its dependencies

hooks: setup  ## install the git pre-commit hooks (nbstripout, ruff; offline)
	$(VENV)/bin/pre-commit install

data: setup  ## make the profile's dataset loadable offline (as root with apt: Debian's dataset-fashion-mnist)
	@$(PY) -m lib.data --profile $(PROFILE) --download --apt

reproduce: setup data  ## run every numbered notebook with papermill (PROFILE=default, DEVICE=auto)
	$(PY) -m lib.pipeline --profile $(PROFILE) --device $(DEVICE)

test: setup  ## run the test suite (CPU, no network)
	$(PY) -m pytest

test-fast: setup  ## the tests without the slow ones: nothing that runs a notebook or several processes
	$(PY) -m pytest -m "not slow"

figures: setup  ## redraw every figure and the report of PROFILE from saved data, no recomputation
	$(PY) -m lib.figures --profile $(PROFILE)

gpu-check: setup  ## on one GPU (<= 10 min, no downloads): step times, CPU/GPU agreement, memory -> benchmarks/
	$(PY) benchmarks/gpu_check.py --device $(if $(filter auto,$(DEVICE)),cuda,$(DEVICE))

lint: setup  ## ruff on the code and the notebooks (line length, imports, bugs)
	$(PY) -m ruff check lib tests benchmarks notebooks

clean-runs:  ## delete runs/ (trained models, executed notebooks, metrics)
	rm -rf runs
