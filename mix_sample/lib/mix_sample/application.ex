defmodule MixSample.Application do
  @moduledoc """
  Starts two Snakeport instances in this app's supervision tree, as a user's app would.

  The harness options come from `config :snakeport, ...` (config/config.exs): the
  `python_path` holding `priv/python/sample_model.py` (`{:priv, "python"}` of
  `otp_app: :mix_sample`), the pool size, the call timeout and the session store limits.
  The interpreter is the virtualenv of `mix snakeport.setup` (with the `python_deps`).
  They apply to both instances:

    * `Snakeport`, the default instance (no `:name`): what `Snakeport.call/4` and friends
      use when no `:instance` is given;
    * `MixSample.Threaded` (`threads: 4`): a second, independent instance whose workers run
      four calls at once; calls name it with `instance: MixSample.Threaded`.
  """
  use Application

  @impl true
  def start(_type, _args) do
    # Options given here override `config :snakeport, ...`; this app sets everything in
    # config, so the child spec needs none.
    children = [
      {Snakeport, []},
      {Snakeport, name: MixSample.Threaded, threads: 4}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: MixSample.Supervisor)
  end
end
