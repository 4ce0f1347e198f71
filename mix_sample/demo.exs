# The demo: `mix run demo.exs` (or the alias `mix demo`) from this directory.
# `mix run` starts the app (and with it the Snakeport harness), then runs this file.
MixSample.run()
