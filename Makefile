# Outpost — the two commands that matter on a fresh Debian 12 machine (as root):
#   make demo   set everything up, then show Outpost at work in a throw-away Postfix
#   make test   set everything up, then run the whole test suite (real Postfix, Redis, …)
#   make lint   ruff and mypy alone (make test runs them first; any finding fails the run)

VENV   ?= .venv
PYTHON := $(VENV)/bin/python
MTA    ?= postfix
PYTEST_ARGS ?=

.PHONY: setup demo lint test bench check-config man docs-links deb clean

setup:
	bash scripts/setup.sh

demo: setup
	$(PYTHON) -m scripts.demo --mta $(MTA)

# configured in pyproject.toml ([tool.ruff], [tool.mypy]); installed by the test extras
lint: setup
	$(PYTHON) -m ruff check
	$(PYTHON) -m mypy

test: lint
	$(PYTHON) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(PYTHON) -m bench.mapping
	$(PYTHON) -m bench.limiter
	$(PYTHON) -m bench.limiter --op slot
	PYTHON=$(PYTHON) bash bench/outpost_throughput.sh

check-config: setup
	$(VENV)/bin/outpost check-config -c contrib/outpost.yaml

# build/man/outpost.8 and build/man/outpost.yaml.5 from docs/ (docutils)
man: setup
	$(PYTHON) scripts/build_man.py

# refresh the links between README.rst and docs/*.rst after moving a section
docs-links: setup
	$(PYTHON) scripts/docs_links.py

# the Debian package, in ../ (build dependencies: see debian/control)
deb:
	dpkg-buildpackage -us -uc -b

clean:
	rm -rf $(VENV) build *.egg-info milter/*.egg-info .mypy_cache .ruff_cache
