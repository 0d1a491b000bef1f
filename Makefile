# Each target sets up what it needs first (scripts/bootstrap.sh is a no-op once the environment exists).
VENV ?= .venv
PY := $(VENV)/bin/python
export VIMAMBA_VENV := $(VENV)

.PHONY: setup demo test test-slow

setup:
	@bash scripts/bootstrap.sh

# The main job. Until `vimamba train` lands it shows the model family; see README.
demo: setup
	$(VENV)/bin/vimamba info

# The default suite (what CI runs): everything but tests marked slow or gpu.
test: setup
	$(PY) -m pytest -q

# The long CPU tests, excluded from the default run.
test-slow: setup
	$(PY) -m pytest -q -m slow
