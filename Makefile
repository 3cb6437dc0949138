# facelab: `make test` sets itself up on a fresh clone (venv, install, kernel, C++ build) and runs every test.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
BIN   := $(VENV)/bin
BUILD ?= cpp/build
export PATH := $(abspath $(BIN)):$(PATH)
export MPLBACKEND := Agg
# tests never touch a user's caches or tracking store
export FACELAB_ARTIFACTS ?= $(abspath .facelab-test/artifacts)
export FACELAB_RUNS ?= $(abspath .facelab-test/runs)

.PHONY: help setup cpp sync-check nbtest pytest ctest test bench demo docs lab clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | column -t -s $$'\t'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (facelab)" >/dev/null
	touch $@

setup: $(VENV)/.installed  ## create .venv, install facelab[dev] editable, register the python3 kernel

cpp: setup  ## build cpp/ (when it exists) against the onnxruntime in the venv or $$ONNXRUNTIME_ROOT
	@if [ -f cpp/CMakeLists.txt ]; then \
	  cmake -S cpp -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$(abspath $(PY)) && \
	  cmake --build $(BUILD) -j2; \
	else echo "cpp/: no CMakeLists.txt yet, skipping the C++ build"; fi

sync-check: setup  ## facelab/ must match nbs/ and notebooks must be clean
	$(PY) tools/check_sync.py

nbtest: setup  ## run every notebook as a test (cells marked slow are skipped)
	$(BIN)/nbdev-test --n-workers 2 --timing

pytest: setup  ## pytest tests/ (exit 5, "no tests collected", is not a failure)
	$(BIN)/pytest -q tests/ ; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

ctest: cpp  ## C++ tests
	@if [ -f $(BUILD)/CTestTestfile.cmake ]; then ctest --test-dir $(BUILD) --output-on-failure; \
	else echo "ctest: no C++ build, skipping"; fi

test: setup cpp sync-check nbtest pytest ctest  ## everything CI runs

bench: setup cpp  ## run benchmarks and write benchmarks/RESULTS.md
	$(PY) benchmarks/run.py --out benchmarks/RESULTS.md

demo: setup  ## end to end on FaceSynth: train macro (papermill), export ONNX + int8, predict with onnxruntime -> demo/
	$(BIN)/facelab demo --out demo

docs: setup  ## render the docs site with Quarto (prints how to install it when missing)
	@if command -v quarto >/dev/null; then $(BIN)/nbdev-docs; \
	else echo "Quarto is not installed, so the docs cannot be rendered here."; \
	     echo "Install it from https://quarto.org/docs/get-started/ (or: $(BIN)/nbdev-install-quarto), then run 'make docs'."; fi

lab: setup  ## JupyterLab on the notebooks, with the venv kernel
	$(BIN)/jupyter lab nbs/

clean:  ## remove build outputs (keeps the venv)
	rm -rf $(BUILD) _docs _proc .facelab-test
