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

.PHONY: help setup cpp-deps test-deps cpp sync-check nbtest pytest ctest test bench demo docs lab clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' | column -t -s $$'\t'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (facelab)" >/dev/null
	touch $@

setup: $(VENV)/.installed  ## create .venv, install facelab[dev] editable, register the python3 kernel

# npm (the ONNX Runtime headers, fetched once into ~/.cache/facelab; not needed with ONNXRUNTIME_ROOT) is checked by cmake
CPP_DEBS := libopencv-dev nlohmann-json3-dev libssl-dev libdlib-dev libdlib-data libblas-dev liblapack-dev
CPP_TOOLS := cmake:cmake g++:g++

cpp-deps:  ## install the C++ build's Debian packages when missing (as root), else say which to install
	@missing=""; for p in $(CPP_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	for t in $(CPP_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "cpp-deps: installing$$missing"; \
	  (apt-get install -y --no-install-recommends $$missing || (apt-get update && apt-get install -y --no-install-recommends $$missing)); \
	else echo "cpp-deps: missing Debian packages:$$missing; install them with: sudo apt-get install$$missing"; exit 1; fi

# services and the browser that tests start themselves on 127.0.0.1 (Redis for Celery jobs, Chromium for the explorers)
TEST_DEBS := redis-server chromium

test-deps:  ## install the test suite's Debian packages when missing (as root), else say which to install
	@missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "test-deps: installing$$missing"; \
	  (apt-get install -y --no-install-recommends $$missing || (apt-get update && apt-get install -y --no-install-recommends $$missing)); \
	else echo "test-deps: missing Debian packages:$$missing (their tests skip); install them with: sudo apt-get install$$missing"; fi

cpp: setup cpp-deps  ## build cpp/ against the onnxruntime in the venv (headers: npm) or $$ONNXRUNTIME_ROOT
	@if [ -f cpp/CMakeLists.txt ]; then \
	  cmake -S cpp -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$(abspath $(PY)) && \
	  cmake --build $(BUILD) -j2; \
	else echo "cpp/: no CMakeLists.txt yet, skipping the C++ build"; fi

sync-check: setup  ## facelab/ must match nbs/ and notebooks must be clean
	$(PY) tools/check_sync.py

nbtest: setup  ## run every notebook as a test (cells marked slow are skipped)
	$(BIN)/nbdev-test --n-workers 2 --timing

# two workers, one file each at a time: every worker gets its own FACELAB_ARTIFACTS/RUNS (tests/conftest.py)
PYTEST_WORKERS ?= 2
pytest: setup test-deps  ## pytest tests/ on $(PYTEST_WORKERS) workers (exit 5, "no tests collected", is not a failure)
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=25 tests/ ; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

ctest: cpp  ## C++ tests: golden outputs, FrameBuffer, reloads, stress (also under TSan and ASan builds)
	@if [ -f $(BUILD)/CTestTestfile.cmake ]; then ctest --test-dir $(BUILD) --output-on-failure; \
	else echo "ctest: no C++ build, skipping"; fi

test: setup cpp sync-check nbtest pytest ctest  ## everything CI runs

bench: setup cpp  ## one benchmark table: benchmarks/RESULTS.md + RESULTS.json (QUICK=1 smallest settings, MERGE=1 keeps rows not re-run, ONLY="cpp data")
	$(PY) benchmarks/run.py --out benchmarks/RESULTS.md $(if $(QUICK),--quick) $(if $(MERGE),--merge) $(if $(ONLY),--only $(ONLY))

demo: setup  ## every task end to end on FaceSynth: train, score vs chance, export (+int8), register/gate/deploy, C++ engine, HTML report -> demo/ (QUICK=1: the CI setting)
	@$(MAKE) --no-print-directory cpp || echo "demo: the C++ engine could not be built; its step will be reported as skipped"
	$(BIN)/facelab demo --out demo $(if $(filter 1 yes true,$(QUICK)),--quick)

docs: setup  ## the docs site in _docs/: Quarto where installed, else a static site (nbdev's doc processing + nbconvert)
	$(PY) tools/build_docs.py --sidebar
	@if command -v quarto >/dev/null; then $(PY) tools/build_docs.py --quarto --out _docs; \
	else echo "Quarto is not installed: building the static site (nbdev doc processing + nbconvert) into _docs/"; \
	     $(PY) tools/build_docs.py --out _docs; fi

lab: setup  ## JupyterLab on the notebooks, with the venv kernel
	$(BIN)/jupyter lab nbs/

clean:  ## remove build outputs (keeps the venv)
	rm -rf $(BUILD) _docs _proc .facelab-test
