# cityanchor: `make demo` and `make test` work on a fresh clone; everything else is optional.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test unit lint demo demo-offline bench clean contract fuzz

install: $(STAMP)

$(STAMP): setup.py package.json package-lock.json
	scripts/ensure-system-deps.sh
	# Pinned node tools, project-local: the anvil EVM node and the solc compiler.
	npm ci --no-audit --no-fund --loglevel=error
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# merkletools is only a compatibility oracle; its pysha3 dependency does not build on 3.11.
	$(PY) -m pip install --quiet --no-deps 'merkletools==1.0.3'
	touch $(STAMP)

test: install
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/unit

# Fuzz every parser and verifier of outside input: 100,000 cases in all, counts per target.
fuzz: install
	$(PY) tests/fuzz/run.py --cases $(or $(FUZZ_CASES),100000)

lint: install
	$(VENV)/bin/ruff check anchor devices tests bench
	$(VENV)/bin/mypy anchor devices

demo: install
	$(VENV)/bin/cityanchor demo --out demo-output

demo-offline: install
	$(VENV)/bin/cityanchor demo --offline --out demo-output

bench: install
	$(PY) bench/core.py
	$(PY) bench/ingest.py
	$(PY) bench/anchoring.py

# Regenerate anchor/contracts/AnchorRegistry.json from the .sol (a test checks they match).
contract: install
	node scripts/compile-contract.js

clean:
	rm -rf $(VENV) node_modules demo-output build *.egg-info
