# Outpost — the two commands that matter on a fresh Debian 12 machine (as root):
#   make demo   set everything up, then show Outpost at work in a throw-away Postfix
#   make test   set everything up, then run the whole test suite (real Postfix, Redis, …)

VENV   ?= .venv
PYTHON := $(VENV)/bin/python
MTA    ?= postfix
PYTEST_ARGS ?=

.PHONY: setup demo test bench check-config clean

setup:
	bash scripts/setup.sh

demo: setup
	$(PYTHON) scripts/demo.py --mta $(MTA)

test: setup
	$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(PYTHON) bench/mapping.py
	$(PYTHON) bench/limiter.py
	$(PYTHON) bench/limiter.py --op slot
	PYTHON=$(PYTHON) bash bench/outpost_throughput.sh

check-config: setup
	$(VENV)/bin/outpost check-config -c contrib/outpost.yaml

clean:
	rm -rf $(VENV) build *.egg-info milter/*.egg-info
