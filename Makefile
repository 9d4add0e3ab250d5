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

# Regenerate the shipped default model (model/default) from seed 0 on 2 cores: the recipe's cohorts
# (three phantom sizes, plus held-out cohorts of other seeds; made once), then training (resumes
# from .bench-tmp/default-model-work after a stop), held-out evaluation and the model card.
DEFAULT_COHORTS := .bench-tmp/default-cohorts
default-model: setup
	$(PY) -m model.training.default --print-cohorts --cohorts $(DEFAULT_COHORTS) | while read -r cmd; do \
	  out=$$(echo "$$cmd" | sed -E 's/.*--out ([^ ]+).*/\1/'); \
	  [ -f "$$out/ground_truth.json" ] || $(VENV)/bin/$$cmd || exit 1; done
	$(PY) -m model.training.default --out model/default --seed 0 --cohorts $(DEFAULT_COHORTS)

clean-venv:
	rm -rf $(VENV)
