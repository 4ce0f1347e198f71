# These tests drive the REAL Python worker through the Snakeport harness started by
# MixSample.Application (config/runtime.exs picks the interpreter: $SNAKEPORT_PYTHON,
# else ../.venv/bin/python, else python3). No mocks.
ExUnit.start()
