# The two commands a new user needs: `make demo` and `make test`. Each sets itself up first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
PYTEST_ARGS ?=

.PHONY: setup test demo clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	bash scripts/demo.sh

clean-venv:
	rm -rf $(VENV)
