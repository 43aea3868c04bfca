# Lantern: `make demo` runs the embedded stack end to end; `make test` runs the whole suite.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean fuzz

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	# torch==2.13.0 is pinned in the same command so pip never reaches for a CUDA build
	$(PY) -m pip install --quiet -c requirements.lock torch==2.13.0 -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/lantern demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check service worker tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks

clean:
	rm -rf $(VENV) lantern-data demo-output *.egg-info

fuzz: $(STAMP)
	# a longer schemathesis pass than the suite's (LANTERN_FUZZ_EXAMPLES per operation, LANTERN_FUZZ_SEED)
	HF_HUB_OFFLINE=1 LANTERN_FUZZ_EXAMPLES=$${LANTERN_FUZZ_EXAMPLES:-1000} $(PY) -m pytest -q -s -p no:cacheprovider \
		tests/integration/test_fuzz_api.py
