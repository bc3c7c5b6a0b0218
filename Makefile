# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-real lint types pytest venv docker-image bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# `make run PORT=9000` serves the API on another port than the config's.
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/llm-supervisor run -c examples/fake-fleet.yaml$(if $(PORT), --port $(PORT))

test: $(STAMP)
	ci/lint.sh
	ci/types.sh
	ci/coverage-core.sh
	ci/deploy-check.sh
	ci/tests.sh

# Real vLLM for CPUs (.venv-vllm, installed when missing) under the supervisor, beside fake-vllm, and the chaos
# scenarios with a real_vllm block on it; not part of `make test`.
# Observations (timings, the output lines the diagnosis saw) land in reports/real-vllm/.
test-real: $(STAMP)
	ci/real-vllm.sh
	LLM_SUPERVISOR_REAL_VLLM=1 $(BIN)/pytest -m real_vllm tests/real_vllm
	ci/real-vllm-chaos.sh

lint: $(STAMP)
	ci/lint.sh

types: $(STAMP)
	ci/types.sh

pytest: $(STAMP)
	ci/tests.sh

docker-image: $(STAMP)
	ci/build-fake-vllm-image.sh

# What `make run` and the other examples leave behind: journals and logs (each example's state_dir).
DEMO_STATE := examples/.llm-supervisor examples/.llm-supervisor-gateway

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .llm-supervisor $(DEMO_STATE)
