# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install phasenet, run the main job on the embedded default
#   make test   create the same .venv and run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/phasenet demo --out demo-output

test: venv
	$(PY) -m pytest

bench: venv
	$(PY) benchmarks/bench_startup.py
	$(PY) benchmarks/bench_build.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_synth.py
	$(PY) benchmarks/synth_realism.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_baselines.py
	$(PY) benchmarks/bench_baselines.py --compare-recycling
	$(PY) benchmarks/bench_onthefly.py
	$(PY) benchmarks/fuzz_build.py

clean:
	rm -rf $(VENV) demo-output
