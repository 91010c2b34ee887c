# Set up and run:   sudo make run    (a venv in .venv, the agent built, then
#                                     `vmagent run` samples this host's VMs)
# Set up and test:  sudo make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
SOURCES := pyproject.toml setup.py agent/vmagent/_version.py \
           $(wildcard native/*.h native/*.py native/*/*.c)

.PHONY: setup run test clean

setup: $(VENV)/.installed

$(VENV)/.installed: $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: setup
	$(BIN)/vmagent run $(if $(CONFIG),-c $(CONFIG))

test: setup
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) build agent/*.egg-info agent/vmagent/_vmprobe.*
