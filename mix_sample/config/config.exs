import Config

# The Python side: `mix snakeport.setup` makes a virtualenv (in _build/snakeport/venv) with
# the Snakeport worker and these packages, and every Snakeport instance started without
# :python runs there. The demo's part 6 uses scikit-learn and pandas for real; :preload has
# each worker import them before it reports ready (sklearn's first import takes a second or
# more: paid at start, not by the first call).
config :snakeport,
  python_deps: ["scikit-learn", "pandas", "pyarrow"],
  preload: ["sklearn.linear_model", "pandas"],
  # The app whose priv/python holds sample_model.py: {:priv, "python"} is resolved against
  # it (in _build under Mix, in the release's lib/ in a release).
  otp_app: :mix_sample,
  python_path: [{:priv, "python"}],
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
