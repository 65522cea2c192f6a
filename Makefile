# ea_nb: `make reproduce` and `make test` are the two commands; both set up .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ea_nb-installed
SCALE ?= cpu
# pytest workers: notebooks and smoke runs are independent, so use every core
WORKERS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install test test-dry test-threads reproduce docs sync-check browser lab readme clean gpu-check gpu-wheels

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ea_nb)" >/dev/null
	@touch $(STAMP)

# nbdev-export and nbdev-clean must leave the tree as it was: notebooks and ea_nb/ agree, notebooks are clean
sync-check: install
	@before=$$(git status --porcelain -uall; git diff); \
	PATH="$(CURDIR)/$(BIN):$$PATH" nbdev-export && PATH="$(CURDIR)/$(BIN):$$PATH" nbdev-clean; \
	after=$$(git status --porcelain -uall; git diff); \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev-export/nbdev-clean changed the tree: export and clean the notebooks, then commit:"; \
	  git status --short; exit 1; fi; \
	echo "sync-check: notebooks and ea_nb/ agree, notebooks are clean"

docs: install
	rm -rf _proc
	@# nbdev-proc-nbs looks for Quarto and says it cannot install it; smalldocs renders the same project without it
	PATH="$(CURDIR)/$(BIN):$$PATH" nbdev-proc-nbs
	$(BIN)/smalldocs render --quiet _proc
	@# smalldocs links KaTeX from a CDN whatever html-math-method says: point it at the vendored copy (nbs/katex)
	sed -i -E 's#https://cdn\.jsdelivr\.net/npm/katex@[0-9.]+/dist/#katex/#g' _proc/_docs/*.html
	@echo "site: _proc/_docs/index.html"

# headless Chromium for the site test (Debian's packages; as root, or through sudo where there is one)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

# The tests that assert on trained quantities (marked `trains` by tests/conftest.py) run again at another torch thread
# count: other thread counts and other CPUs round differently, so a bound that holds at one count only fails here.
MAIN_THREADS = $(shell n=$$(( $$(nproc 2>/dev/null || echo 2) / $(WORKERS) )); echo $$(( n > 0 ? n : 1 )))
GUARD_THREADS ?= $(if $(filter 1,$(MAIN_THREADS)),2,1)

test: sync-check docs browser
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup -m "not slow" --durations=25
	$(MAKE) --no-print-directory test-threads

# the dry run of every full-scale file by itself (make test runs them too): the paper's models and sizes on fixtures
test-dry: install
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup tests/test_full_dry.py

test-threads: install
	@echo "the tests that assert on trained quantities again, at $(GUARD_THREADS) torch thread(s) (the run above: $(MAIN_THREADS))"
	EA_NB_TEST_THREADS=$(GUARD_THREADS) $(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup -m trains

reproduce: install
	$(BIN)/ea-nb reproduce --scale $(SCALE) --jobs $(WORKERS)
	$(BIN)/ea-nb results

# the prepared GPU check (tools/gpu_check.py): every measurement into runs/gpu/ (GPU_ARGS='--out DIR' elsewhere).
# Here: the venv (make gpu-check GPU_ARGS='--device cpu --quick' is the CPU self-check). Where there is no venv (the GPU
# machine): python3 with the wheels of `make gpu-wheels` unpacked into .whl/site, ea_nb from this tree.
GPU_ARGS ?=
gpu-check:
ifeq ($(wildcard $(BIN)/python),)
	@test -d .whl/site || python3 tools/gpu_wheels.py --offline --unpack .whl/site
	PYTHONPATH="$(CURDIR):$(CURDIR)/.whl/site" python3 tools/gpu_check.py $(GPU_ARGS)
else
	PYTHONPATH="$(CURDIR)" $(BIN)/python tools/gpu_check.py $(GPU_ARGS)
endif

# wheels the GPU machine lacks (python 3.12, manylinux x86_64; no registry there) into .whl/gpu, unpacked into .whl/site
gpu-wheels: install
	$(BIN)/python tools/gpu_wheels.py --dest .whl/gpu --unpack .whl/site

readme: install
	$(BIN)/ea-nb readme

lab: install
	$(BIN)/jupyter lab nbs

clean:
	rm -rf _proc runs/*_tiny
