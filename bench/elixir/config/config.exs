import Config

# The benchmark starts and stops Snakeport instances itself; keep the log quiet.
config :logger, level: :warning
