# Two commands for a fresh machine with Python 3.10+ and pip: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-all lint bench clean setup browser

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,tvm,executorch]'
	touch $(STAMP)

run: $(STAMP)
	rm -rf runs/quickstart
	$(BIN)/nas run examples/quickstart.yaml --out runs/quickstart

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -m "not slow" --durations=15 tests

# Headless Chromium renders report.html in the tests; without it that one check is skipped.
browser:
	-@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } || echo "make test: chromium not installed; the report.html browser check will be skipped"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check nas latency_models search_spaces compress tests benchmarks

clean:
	rm -rf runs .pytest_cache
