# cityanchor: `make demo` and `make test` work on a fresh clone; everything else is optional.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test unit lint demo demo-offline bench clean contract fuzz faults soak

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
	$(PY) bench/broker_persistence.py
	$(PY) bench/witness.py
	# 10M readings over 13 months (about an hour on 2 cores; --keep DIR reuses the fill).
	$(PY) bench/scale.py

# The fault campaign (bench/faults.py): every fault of issue 11 under 200 readings/s, both
# device sides; the tables go to docs/reliability.md. `make test` runs its quick mode
# (tests/integration/test_faults_quick.py).
faults: install
	$(PY) bench/faults.py --device sdk --doc docs/reliability.md --label full-sdk
	$(PY) bench/faults.py --device paho --doc docs/reliability.md --label full-paho

# One hour under 1,000 readings/s: memory, fds, database size, seal latency (plot in docs/).
soak: install
	$(PY) bench/soak.py --plot docs/soak-1h.png

# Regenerate anchor/contracts/AnchorRegistry.json from the .sol (a test checks they match).
contract: install
	node scripts/compile-contract.js

clean:
	rm -rf $(VENV) node_modules demo-output build *.egg-info
