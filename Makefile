# cityanchor: `make demo` and `make test` work on a fresh clone; everything else is optional.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test unit lint demo demo-offline bench clean

install: $(STAMP)

$(STAMP): setup.py
	scripts/ensure-system-deps.sh
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

clean:
	rm -rf $(VENV) demo-output build *.egg-info
