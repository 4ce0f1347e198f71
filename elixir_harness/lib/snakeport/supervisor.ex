defmodule Snakeport.Supervisor do
  @moduledoc false
  # The supervision tree of one instance, started by `Snakeport.start_link/1`. Its processes
  # and tables are named after the instance (Snakeport.Instance.names/1); for the default
  # instance `Snakeport`:
  #
  #   Snakeport.Supervisor (rest_for_one)
  #   ├── Snakeport.Instance          the instance's :persistent_term entry (names, config)
  #   ├── Snakeport.Cluster.Scope     the :pg scope of the instance's cluster (same name on
  #   │                               every node: groups :members and :workers)
  #   ├── Snakeport.Pool              worker registry (ETS), monitors workers, start gate,
  #   │                               restart backoff; ready workers join :workers
  #   ├── Snakeport.Sessions.Server   session store (ETS), owners' monitors, TTL sweep,
  #   │                               routes to the sessions of other nodes
  #   ├── Snakeport.Cluster           this node in :members, load reports to and from the
  #   │                               other nodes (ETS), placement
  #   ├── Snakeport.ToolSupervisor    Task.Supervisor: the Elixir tools Python calls
  #   ├── Snakeport.WorkerSupervisor  (one_for_one)
  #   │   └── Snakeport.Worker 0..pool_size-1, one Port (`python -m snakeport`) each,
  #   │       each linked to its Snakeport.Courier once ready
  #   └── (start gate: Snakeport.Pool.await_start/2, temporary, no process)
  #
  # The workers do their handshakes in parallel; the start gate, run by this supervisor
  # while it starts, returns once every worker is ready, or fails the start with the first
  # worker's %Snakeport.Error{} (Snakeport.start_link/1 returns it).
  #
  # rest_for_one: if the session store restarts, the workers restart too, so that no
  # Python session outlives its record. Shutdown runs in reverse: ports close first, the
  # instance's :persistent_term entry goes last.
  #
  # The workers are isolated from each other: one worker that keeps dying (killed over and
  # over, or crashing at start) must not take its healthy siblings and their sessions down.
  # A worker's restarts are paced by Snakeport.Pool.restart_delay/3 (backoff: nothing after
  # a worker that ran for a while, then 100 ms doubling up to :max_restart_backoff after
  # quick exits), which bounds how often one worker can restart in any window of
  # @intensity_seconds: at most one immediate restart, one per doubling step (a dozen at
  # most, for any backoff under ten minutes) and one per :max_restart_backoff. The worker
  # supervisor's intensity is that bound times the pool size, so worker deaths alone never
  # exhaust it (which would restart every worker); a failure of the supervision machinery
  # itself still escalates as usual. The alternative, restarting Python inside a
  # long-lived worker process, would break the invariant the rest relies on (one worker
  # process = one Python process: callers' monitors, the store's lost sessions, the
  # courier's link).

  use Supervisor

  alias Snakeport.Instance

  @doc false
  def start_link(config) do
    names = Instance.names(config.name)
    Supervisor.start_link(__MODULE__, {names, config}, name: names.supervisor)
  end

  @intensity_seconds 5

  @doc false
  # The most restarts one worker can make in @intensity_seconds under the Pool's backoff.
  def restarts_per_worker(max_backoff),
    do: 1 + 16 + div(@intensity_seconds * 1000, max(max_backoff, 1)) + 1

  @impl true
  def init({names, config}) do
    arg = %{names: names, config: config}

    workers =
      for index <- 0..(config.pool_size - 1)//1,
          do: {Snakeport.Worker, {index, names, config}}

    worker_sup = %{
      id: :worker_supervisor,
      type: :supervisor,
      start:
        {Supervisor, :start_link,
         [
           workers,
           [
             strategy: :one_for_one,
             name: names.worker_supervisor,
             max_restarts: config.pool_size * restarts_per_worker(config.max_restart_backoff),
             max_seconds: @intensity_seconds
           ]
         ]}
    }

    children = [
      {Snakeport.Instance, config},
      %{id: :cluster_scope, start: {:pg, :start_link, [names.scope]}},
      {Snakeport.Pool, arg},
      {Snakeport.Sessions.Server, arg},
      {Snakeport.Cluster, arg},
      {Task.Supervisor, name: names.tool_supervisor},
      worker_sup,
      %{
        id: :start_gate,
        start: {Snakeport.Pool, :await_start, [names, config]},
        restart: :temporary
      }
    ]

    Supervisor.init(children, strategy: :rest_for_one)
  end
end
