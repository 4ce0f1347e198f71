defmodule Snakeport.Instance do
  @moduledoc false
  # An instance's identity: the names of its processes and ETS tables (derived from the
  # instance name, so that they survive restarts of the processes that own them), and the
  # configuration every caller needs.
  #
  # Both live in one :persistent_term entry, `{Snakeport, name}`, that a call reads once
  # (fetch/1). This process, the first child of the instance's supervisor, writes it when
  # the instance starts (a persistent_term update costs the whole VM a scan: once per start)
  # and erases it when the instance stops, after every other child has stopped.
  # It also owns the table of the instance's Elixir tools (Snakeport.Tools), filled from the
  # `:tools` start option.

  use GenServer

  alias Snakeport.Error

  @type t :: %{
          name: atom(),
          supervisor: atom(),
          instance: atom(),
          pool: atom(),
          pool_table: atom(),
          server: atom(),
          sessions: atom(),
          owners: atom(),
          state: atom(),
          tools: atom(),
          tool_supervisor: atom(),
          worker_supervisor: atom(),
          cluster: atom(),
          scope: atom(),
          cluster_table: atom(),
          call_timeout: timeout(),
          tool_timeout: pos_integer(),
          pool_size: non_neg_integer(),
          placement: Snakeport.Cluster.placement(),
          tags: [atom()],
          epoch: :atomics.atomics_ref()
        }

  @doc false
  # The names of an instance's processes and tables. For the default instance `Snakeport`
  # they are `Snakeport.Supervisor`, `Snakeport.Pool`, `Snakeport.Sessions.Server`, ...
  @spec names(atom()) :: map()
  def names(name) do
    %{
      name: name,
      supervisor: Module.concat(name, "Supervisor"),
      instance: Module.concat(name, "Instance"),
      pool: Module.concat(name, "Pool"),
      pool_table: Module.concat(name, "Pool"),
      server: Module.concat(name, "Sessions.Server"),
      sessions: Module.concat(name, "Sessions"),
      owners: Module.concat(name, "Sessions.Owners"),
      state: Module.concat(name, "Sessions.State"),
      tools: Module.concat(name, "Tools"),
      tool_supervisor: Module.concat(name, "ToolSupervisor"),
      worker_supervisor: Module.concat(name, "WorkerSupervisor"),
      # The same names on every node: the :pg scope of the instance's cluster, the process
      # that advertises this node's workers in it, the table of the other nodes' reports.
      cluster: Module.concat(name, "Cluster"),
      scope: Module.concat(name, "Cluster.Scope"),
      cluster_table: Module.concat(name, "Cluster")
    }
  end

  @doc false
  # The running instance `name`: one :persistent_term read.
  @spec fetch(atom()) :: {:ok, t()} | {:error, Error.t()}
  def fetch(name) do
    case :persistent_term.get({Snakeport, name}, nil) do
      nil -> {:error, not_started(name)}
      instance -> {:ok, instance}
    end
  end

  @doc false
  def not_started(Snakeport) do
    Error.new(
      :not_started,
      "Snakeport is not running: add {Snakeport, opts} to your application's supervision tree"
    )
  end

  def not_started(name) do
    Error.new(
      :not_started,
      "the Snakeport instance #{inspect(name)} is not running: add " <>
        "{Snakeport, name: #{inspect(name)}, ...} to your application's supervision tree",
      %{instance: name}
    )
  end

  @doc false
  # The error for a ref or session context of instance A used in a request to instance B.
  @spec mismatch_error(Snakeport.Ref.t() | Snakeport.SessionContext.t(), atom()) :: Error.t()
  def mismatch_error(%{instance: owner} = thing, instance) do
    what =
      case thing do
        %Snakeport.Ref{} -> "#{inspect(thing)} belongs to"
        %Snakeport.SessionContext{session_id: id} -> "the session context #{inspect(id)} is of"
      end

    Error.new(
      :instance_mismatch,
      "#{what} the Snakeport instance #{inspect(owner)}, but this request goes to " <>
        "#{inspect(instance)}. Refs and session contexts are only valid in their own " <>
        "instance: pass instance: #{inspect(owner)}.",
      %{instance: instance, owner_instance: owner}
    )
  end

  ## Server ------------------------------------------------------------------------------------

  @doc false
  def start_link(config) do
    GenServer.start_link(__MODULE__, config, name: names(config.name).instance)
  end

  @impl true
  def init(config) do
    # Trap exits, so that terminate/2 erases the entry when the supervisor stops us.
    Process.flag(:trap_exit, true)
    key = {Snakeport, config.name}
    names = names(config.name)
    Snakeport.Tools.new_table(names.tools, config.tools)

    value =
      Map.merge(names, %{
        call_timeout: config.call_timeout,
        tool_timeout: config.tool_timeout,
        pool_size: config.pool_size,
        placement: config.placement,
        tags: config.tags,
        # The session table's epoch (Snakeport.Sessions): a new counter per start, so that
        # no caller's cached session survives its instance.
        epoch: :atomics.new(1, [])
      })

    :persistent_term.put(key, value)
    {:ok, key}
  end

  @impl true
  def terminate(_reason, key) do
    :persistent_term.erase(key)
    :ok
  end
end
