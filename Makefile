# Snakeport: the two commands are `make demo` and `make test`.
# Both install what a fresh Debian machine lacks (Erlang/Elixir via apt-get, the repository's
# virtualenv with the worker), then run; mix_sample gets its own virtualenv (the worker and
# its python_deps) from `mix snakeport.setup`, as a user's app would. `make bench` runs the
# benchmarks (not part of `make test`).

SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.snakeport-installed
# Keep Mix from asking for Hex (unreachable here); the Mix projects have no Hex deps.
export MIX_HOME ?= $(CURDIR)/.mix
export HEX_OFFLINE := 1

.PHONY: all test demo bench fuzz setup tools venv test-python test-harness test-sample clean

all: test

setup: tools venv

# $(call apt_install,PACKAGES,WHAT,HINT): shell commands that install Debian PACKAGES with
# apt-get (as root, or with sudo), or stop with a message naming WHAT is missing and HINT.
define apt_install
if [ "$$(id -u)" = 0 ]; then SUDO=""; \
elif command -v sudo >/dev/null; then SUDO="sudo"; \
else echo "error: $(2) missing and I am not root (no sudo either)."; \
     echo "       install them yourself (apt-get install $(1)); $(3)"; exit 1; fi; \
if ! command -v apt-get >/dev/null; then \
  echo "error: $(2) missing and this is not a Debian-like system (no apt-get)."; \
  echo "       $(3)"; exit 1; fi; \
$$SUDO apt-get update -qq && \
DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(1) >/dev/null || \
  { echo "error: apt-get could not install $(1) (see above)"; exit 1; }
endef

## tools: Erlang/OTP and Elixir from Debian's packages when `erl`, `escript` or `mix` are missing.
tools:
	@if command -v erl >/dev/null && command -v escript >/dev/null && command -v mix >/dev/null; then \
	  echo "==> erl and mix found: $$(command -v erl), $$(command -v mix)"; \
	else \
	  echo "==> erl/mix missing: installing Debian's erlang-nox and elixir with apt-get"; \
	  $(call apt_install,erlang-nox erlang-dev elixir,Erlang/Elixir are,install Erlang/OTP >= 25 and Elixir >= 1.14 then rerun.); \
	fi

## venv: .venv with the worker installed (editable, the C accelerator of the codec built in
## place) and its test extra. A C compiler and the Python headers come from Debian's gcc and
## python3-dev when missing (not needed with SNAKEPORT_PURE_PYTHON=1: pure-Python codec).
venv: $(STAMP)

$(STAMP): setup.cfg setup.py worker/snakeport/_cetf.c worker/snakeport/_clane.c worker/snakeport/_cetf_api.h
	@if ! $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null; then \
	  echo "==> python3 venv support missing: installing python3-venv"; \
	  $(call apt_install,python3-venv,Python's venv module is,install venv support for $(PYTHON) then rerun.); \
	fi
	@if [ -n "$$SNAKEPORT_PURE_PYTHON" ] && [ "$$SNAKEPORT_PURE_PYTHON" != 0 ]; then \
	  echo "==> SNAKEPORT_PURE_PYTHON is set: the codec's C accelerator is not needed"; \
	elif command -v cc >/dev/null && \
	     $(PYTHON) -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
	  echo "==> C compiler and Python headers found: $$(command -v cc)"; \
	else \
	  echo "==> C compiler or Python headers missing: installing Debian's gcc and python3-dev with apt-get"; \
	  $(call apt_install,gcc python3-dev,a C compiler or the Python headers are,install a C compiler and the headers of $(PYTHON) or set SNAKEPORT_PURE_PYTHON=1 (pure-Python codec).); \
	fi
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	@touch $@

test: setup test-python test-harness test-sample

test-python: venv
	$(VPY) -m pytest -q

# The harness tests run the worker of the repository's virtualenv (SNAKEPORT_PYTHON); their
# integration tests make apps of their own, with their own virtualenvs.
test-harness: setup
	cd elixir_harness && SNAKEPORT_PYTHON=$(VPY) MIX_ENV=test mix test

# mix_sample runs in the virtualenv of `mix snakeport.setup` (mix_sample/_build/snakeport/venv:
# the worker and its python_deps), made or brought up to date first (a no-op when it is).
test-sample: setup
	cd mix_sample && MIX_ENV=test mix snakeport.setup && MIX_ENV=test mix test

demo: setup
	cd mix_sample && mix snakeport.setup && mix run demo.exs

bench: setup
	$(MAKE) -C bench all

## fuzz: FUZZ_SECONDS (default 60) of seeded random inputs against both codec paths (the C
## accelerator and the pure-Python codec must agree; decoding must stay within its memory
## budget), then as long against the worker's C lane (a worker with it and one without must
## write the same frames for the same call-shaped frames, valid or mutated), and as long
## again with both workers under an allow-list that refuses some of those functions. A
## finding exits 1 and is saved in fuzz-findings/. `make test` runs 2 seconds of each.
FUZZ_SECONDS ?= 60
FUZZ_ALLOW = operator.add,operator.getitem,builtins.len,builtins.sorted,builtins.int,builtins.dict
fuzz: venv
	$(VPY) tests/codec/fuzz_etf.py --seconds $(FUZZ_SECONDS)
	$(VPY) tests/worker/fuzz_lane.py --seconds $(FUZZ_SECONDS)
	$(VPY) tests/worker/fuzz_lane.py --seconds $(FUZZ_SECONDS) --allow $(FUZZ_ALLOW)

clean:
	rm -rf $(VENV) .mix elixir_harness/_build mix_sample/_build mix_sample/deps build worker/snakeport/*.so
