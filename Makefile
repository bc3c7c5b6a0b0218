# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint types pytest venv docker-image bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/llm-supervisor run -c examples/fake-fleet.yaml

test: $(STAMP)
	ci/lint.sh
	ci/types.sh
	ci/coverage-core.sh
	ci/tests.sh

lint: $(STAMP)
	ci/lint.sh

types: $(STAMP)
	ci/types.sh

pytest: $(STAMP)
	ci/tests.sh

docker-image: $(STAMP)
	ci/build-fake-vllm-image.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .llm-supervisor
