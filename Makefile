# Everything a fresh machine needs: `make demo` runs the demo, `make test` runs the tests.
# Both create .venv and install funnel-tw into it (first, as root, OpenSSL's headers for the C fast
# path if missing: .ci/build-deps); `make test` also installs the Debian tools
# the interop tests drive (when run as root). `make fuzz` runs each fuzz target for FUZZ_SECONDS.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
FUZZ_SECONDS ?= 30

.PHONY: demo test lint type check bench fuzz system-deps clean

$(STAMP): setup.cfg pyproject.toml setup.py funnel_tw/netstack/_checksum.c funnel_tw/wireguard/_transport.c
	bash .ci/build-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/funnel-tw demo

system-deps:
	bash .ci/system-deps

test: $(STAMP) system-deps
	$(BIN)/python -m tests.run $(TESTS)

lint: $(STAMP)
	$(BIN)/ruff check funnel_tw tests bench twisted examples
	$(BIN)/ruff format --check funnel_tw tests bench twisted examples

type: $(STAMP)
	$(BIN)/mypy

check: lint type test

bench: $(STAMP)
	$(BIN)/python bench/wireguard.py

# coverage-guided fuzzing (docs/fuzzing.md): every target in turn, FUZZ_SECONDS each;
# FUZZ_TARGETS="clienthello config" runs only those
fuzz: $(STAMP)
	$(BIN)/pip install -q atheris
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python -m tests.fuzz $(FUZZ_TARGETS)

clean:
	rm -rf $(VENV) _trial_temp* .mypy_cache .ruff_cache .hypothesis .fuzz
