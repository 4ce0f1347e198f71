import Config

# Static settings of the Snakeport harness. The Python interpreter and the
# directory holding `sample_model.py` are resolved at boot in config/runtime.exs.
config :snakeport,
  pool_size: 1,
  call_timeout: 15_000,
  session_store: [
    default_ttl: 3600,
    max_sessions: 10_000,
    cleanup_interval: 60_000,
    strict_mode: false
  ]

if config_env() == :test do
  config :logger, level: :warning
end
