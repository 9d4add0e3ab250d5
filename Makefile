# The two commands a new user needs: `make demo` and `make test`. Each sets itself up first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
PYTEST_ARGS ?=

.PHONY: setup test demo default-model clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	bash scripts/demo.sh

# Regenerate the shipped default model (model/default) from seed 0: about 25 min on 2 cores (cohort, training, evaluation).
DEFAULT_COHORT := .bench-tmp/default-cohort-seed0
default-model: setup
	$(VENV)/bin/ctvqa synth --out $(DEFAULT_COHORT) --patients 180 --seed 0 --size 64,192,192
	$(PY) -m model.training.default --out model/default --seed 0 --cohort $(DEFAULT_COHORT)

clean-venv:
	rm -rf $(VENV)
