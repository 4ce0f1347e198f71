defmodule Snakeport.Supervisor do
  @moduledoc false
  # The harness's supervision tree, started by `Snakeport.start_link/1`:
  #
  #   Snakeport.Supervisor (rest_for_one)
  #   ├── Snakeport.Pool              worker registry (ETS), monitors workers
  #   ├── Snakeport.Sessions          session store (ETS), owners' monitors, TTL sweep
  #   └── Snakeport.WorkerSupervisor  (one_for_one)
  #       └── Snakeport.Worker 0..pool_size-1, one Port (`python -m snakeport`) each
  #
  # rest_for_one: if the session store restarts, the workers restart too, so that no
  # Python session outlives its record. Shutdown runs in reverse: ports close first.

  use Supervisor

  @doc false
  def start_link(config), do: Supervisor.start_link(__MODULE__, config, name: __MODULE__)

  @impl true
  def init(config) do
    :ok = Snakeport.Client.put_config(config)
    workers = for index <- 0..(config.pool_size - 1), do: {Snakeport.Worker, {index, config}}

    worker_sup = %{
      id: Snakeport.WorkerSupervisor,
      type: :supervisor,
      start:
        {Supervisor, :start_link,
         [
           workers,
           [
             strategy: :one_for_one,
             name: Snakeport.WorkerSupervisor,
             max_restarts: max(3, 2 * config.pool_size),
             max_seconds: 5
           ]
         ]}
    }

    children = [
      {Snakeport.Pool, config},
      {Snakeport.Sessions, config},
      worker_sup
    ]

    Supervisor.init(children, strategy: :rest_for_one)
  end
end
