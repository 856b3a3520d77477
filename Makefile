# `make demo` and `make test` bootstrap .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lumenkit-installed
PYTEST_ARGS ?=

.PHONY: demo test test-all bench bench-cuda venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: its CPU wheel is on local disk, any other version downloads gigabytes.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[synth,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lumenkit demo --out outputs/demo

# pytest exits 5 when nothing is collected: that is not a failure of the suite.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

# In dependency order: t2i.py reads t2i_speed.py's results, gsir_parts.py re-evaluates gsir.py's models.
# gsir_cuda.py needs a GPU and gsplat: `make bench-cuda` on such a machine (benchmarks/cuda_checks.sh).
BENCH_SCRIPTS := diffusion t2i_speed t2i train_engine video longexp gsir_raster gsir_normal_floor gsir gsir_ablation gsir_parts

bench: $(STAMP)
	set -e; for f in $(BENCH_SCRIPTS); do echo "== benchmarks/$$f.py"; $(PY) benchmarks/$$f.py; done

bench-cuda: $(STAMP)
	$(PY) benchmarks/gsir_cuda.py --write

clean:
	rm -rf $(VENV) outputs build .pytest_cache
