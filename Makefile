# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo needs the core package only (no Ray: it never runs on a cluster); tests add dev and ray.
DEMO_STAMP := $(VENV)/.installed-core
DEMO_DIR ?= demo-store
DEMO_ARGS ?=

.PHONY: demo test install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev,ray]"
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $(DEMO_STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python -m scalerec.demo --data-dir $(DEMO_DIR) $(DEMO_ARGS)

# The non-Ray and the Ray tests in separate pytest processes; a process that dies is named, never silent.
test: $(STAMP)
	$(BIN)/python tests/run_suite.py -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
