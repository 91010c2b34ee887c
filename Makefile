# As root (`sudo make ...` where sudo is present):
# Set up and run:   make run    (the Debian build packages installed if
#                                missing, a venv in .venv, the agent built,
#                                then `vmagent run` samples this host's VMs)
# Set up and test:  make test   (also the packages the tests need)
# Packages:         make deb    (build/deb/vmagent_VERSION_ARCH.deb)
#                   make rpm    (build/rpm/RPMS/ARCH/vmagent-VERSION-*.rpm)
# The packages: packaging/debian-packages.txt, also read by .ci/run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
SOURCES := pyproject.toml setup.py agent/vmagent/_version.py \
           $(wildcard native/*.h native/*.py native/*/*.c native/*/*.h)

# `make test` installs the test packages with the build ones (one apt-get);
# the package tests build both packages, so "deb" comes with "test"
PACKAGE_GROUPS := build $(if $(filter test,$(MAKECMDGOALS)),test deb) \
                  $(if $(filter deb rpm,$(MAKECMDGOALS)),deb)

.PHONY: setup packages run test deb rpm clean

setup: packages $(VENV)/.installed

packages:
	@sh packaging/debian-packages $(PACKAGE_GROUPS)

$(VENV)/.installed: $(SOURCES) | packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: setup
	$(BIN)/vmagent run $(if $(CONFIG),-c $(CONFIG))

test: setup
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS) tests

deb: packages
	sh packaging/build-deb build/deb

rpm: packages
	sh packaging/build-rpm build/rpm

clean:
	rm -rf $(VENV) build agent/*.egg-info agent/vmagent/_vmprobe.*
