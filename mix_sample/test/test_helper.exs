# These tests drive the REAL Python worker through the Snakeport harness started by
# MixSample.Application, in the virtualenv of `mix snakeport.setup` (config/config.exs:
# python_deps; `make test-sample` at the repo root runs the setup first). No mocks.
ExUnit.start()
