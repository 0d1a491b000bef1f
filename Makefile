# Each target sets up what it needs first (scripts/bootstrap.sh is a no-op once the environment exists).
VENV ?= .venv
PY := $(VENV)/bin/python
export VIMAMBA_VENV := $(VENV)

.PHONY: setup demo test test-slow

setup:
	@bash scripts/bootstrap.sh

# The main job: trains a small Vim on the built-in digits on the CPU (a few minutes, >= 95% validation top-1);
# the run lands in runs/DATE-TIME-digits/ (summary.json, checkpoints, metrics, learning curves).
demo: setup
	$(VENV)/bin/vimamba train

# The default suite (what CI runs): everything but tests marked slow or gpu.
test: setup
	$(PY) -m pytest -q --durations=15

# The long CPU tests, excluded from the default run.
test-slow: setup
	$(PY) -m pytest -q -m slow
