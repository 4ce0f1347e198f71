defmodule MixSample.Application do
  @moduledoc """
  Starts the Snakeport harness in this app's supervision tree, as a user's app would.

  The harness options come from `config :snakeport, ...` (config/config.exs and
  config/runtime.exs): the Python interpreter, the extra `python_path` holding
  `python/sample_model.py`, the pool size, the call timeout and the session store limits.
  """
  use Application

  @impl true
  def start(_type, _args) do
    # Options given here override `config :snakeport, ...`; this app sets everything in
    # config, so the child spec needs none.
    children = [
      {Snakeport, []}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: MixSample.Supervisor)
  end
end
