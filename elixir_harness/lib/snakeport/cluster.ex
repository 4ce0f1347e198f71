defmodule Snakeport.Cluster do
  @moduledoc false
  # One instance's cluster: the instances with the same name on the nodes of an Erlang
  # cluster form one pool. Nothing here is on the call path: a call in a session it already
  # owns reads only this node's tables (Snakeport.Sessions); this module is asked when a
  # session is placed (place/2), when a session id unknown here is looked up on the other
  # nodes (locate/3), and for the cluster's stats (others/1).
  #
  # Discovery is :pg, in a scope named after the instance (Snakeport.Instance.names/1: the
  # same name on every node), started by the instance's supervisor before the Pool:
  #
  #   * group :members - this process, one per node running the instance (also a node
  #     without workers of its own, `pool_size: 0`);
  #   * group :workers - every ready worker (Snakeport.Pool joins it on registration, the
  #     worker leaves when it stops, :pg drops it when it dies).
  #
  # Load: every Defaults.cluster_interval/0 ms this process sends its node's report (per
  # worker: pid, index, sessions homed there, requests in flight, stuck or not; the
  # instance's tags) to the other members, and at once to a member that joins. Each node
  # keeps the reports in a public ETS table `{node, sessions, report}` (its own row too),
  # read by callers when they place a session; a placement on a node bumps its `sessions`
  # there until the next report, so that a burst of placements spreads. A member that
  # leaves (its node went down or disconnected, or its instance stopped) loses its row at
  # once (pg's leave notification; OTP 25.0 without pg:monitor_scope/1 notices at the
  # next report).
  #
  # Placement (place/2) of a new session, by policy (the `:placement` option of a call, a
  # SessionContext, a SessionStore session; else the instance's `:placement`):
  #
  #   * :local (default) - a worker of this node when one is available (ready, not stuck),
  #     else the least loaded other node;
  #   * :any - the least loaded node, this one included (sessions per available worker,
  #     then requests in flight; this node wins ties);
  #   * {:node, node} - that node;
  #   * {:tags, tags} - a node whose instance was started with all of `tags`: this node if
  #     it has them, else the least loaded that does.
  #
  # The node chosen opens the session on its own least-loaded worker (its session store is
  # the session's home, see Snakeport.Sessions.Server). Nodes count only when they are
  # connected and have a worker in :workers that their last report does not say is stuck.

  use GenServer
  require Logger

  alias Snakeport.{Defaults, Error, Instance, Options, Pool, Telemetry}
  alias Snakeport.Sessions.Server

  @type placement :: :local | :any | {:node, node()} | {:tags, [atom()]}

  @interval Defaults.cluster_interval()
  @counts_timeout 1_000

  ## Placement ----------------------------------------------------------------------------

  @doc false
  # Validates a placement (option `key`): :local, :any, {:node, n} or [node: n],
  # {:tags, [atom]} or [tags: [atom]].
  @spec placement!(atom(), term()) :: placement()
  def placement!(_key, placement) when placement in [:local, :any], do: placement

  def placement!(_key, {:node, node}) when is_atom(node) and node not in [nil, true, false],
    do: {:node, node}

  def placement!(key, node: node), do: placement!(key, {:node, node})

  def placement!(key, {:tags, [_ | _] = tags} = placement) do
    if Enum.all?(tags, &(is_atom(&1) and &1 not in [nil, true, false])),
      do: {:tags, Enum.uniq(tags)},
      else: placement_error(key, placement)
  end

  def placement!(key, tags: tags), do: placement!(key, {:tags, tags})
  def placement!(key, other), do: placement_error(key, other)

  defp placement_error(key, value),
    do:
      Options.invalid!(
        key,
        ":local, :any, {:node, node} (or node: node) or {:tags, [atom, ...]} (or tags: [...])",
        value
      )

  @doc false
  # The node where a new session of `inst` goes under `placement` (nil: the instance's).
  # Reads this node's tables and :pg only.
  @spec place(Instance.t(), placement() | nil) :: {:ok, node()} | {:error, Error.t()}
  def place(inst, nil), do: place(inst, inst.placement)

  def place(inst, placement) do
    here = node()

    chosen =
      case placement do
        :local ->
          if local_available?(inst), do: here, else: least(remote_candidates(inst))

        :any ->
          least(candidates(inst))

        {:node, ^here} ->
          here

        {:node, node} ->
          inst |> remote_candidates() |> Enum.find_value(&(&1.node == node && node))

        {:tags, tags} ->
          matching = Enum.filter(candidates(inst), &(tags -- &1.tags == []))

          if Enum.any?(matching, &(&1.node == here)), do: here, else: least(matching)
      end

    case chosen do
      nil ->
        {:error, no_node(inst, placement)}

      node ->
        bump(inst, node)
        {:ok, node}
    end
  end

  defp no_node(inst, placement) do
    {what, details} =
      case placement do
        {:node, node} ->
          {"node #{inspect(node)} has no available worker of the instance (it is not " <>
             "connected, does not run #{inspect(inst.name)}, or its workers are starting, " <>
             "stuck or absent)", %{node: node}}

        {:tags, tags} ->
          {"no connected node with an available worker has the tags #{inspect(tags)} " <>
             "(the instance's :tags option)", %{tags: tags}}

        _ ->
          {"no Python worker is running on this node or on any connected node (they are " <>
             "starting or restarting, or the instances run with pool_size: 0)", %{}}
      end

    Error.new(:no_workers, what, Map.put(details, :placement, placement))
  end

  # Every node that may take a new session, this one included.
  defp candidates(inst) do
    local =
      if local_available?(inst) do
        [candidate(node(), own_row(inst), length(available(inst)), inst.tags)]
      else
        []
      end

    local ++ remote_candidates(inst)
  end

  # The other connected nodes with an available worker in :workers, per their reports.
  defp remote_candidates(inst) do
    live = inst.scope |> members(:workers) |> MapSet.new()
    connected = Node.list()

    for {node, sessions, %{workers: workers} = report} <- rows(inst),
        node != node(),
        node in connected,
        up = Enum.count(workers, &(not &1.stuck and MapSet.member?(live, &1.pid))),
        up > 0 do
      candidate(node, {sessions, report}, up, report.tags)
    end
  end

  defp candidate(node, {sessions, report}, up, tags) do
    %{
      node: node,
      load: sessions / max(up, 1),
      pending: if(report, do: pending(report.workers), else: 0),
      tags: tags
    }
  end

  defp pending(workers), do: workers |> Enum.map(& &1.pending) |> Enum.sum()

  # The least loaded candidate: sessions per available worker, then requests in flight,
  # this node first, then by name.
  defp least([]), do: nil

  defp least(candidates) do
    here = node()

    candidates
    |> Enum.min_by(&{&1.load, &1.pending, &1.node != here, &1.node})
    |> Map.fetch!(:node)
  end

  defp local_available?(inst), do: available(inst) != []

  defp available(inst),
    do: inst.pool_table |> Pool.available() |> Enum.filter(&Process.alive?(&1.pid))

  defp own_row(inst) do
    case :ets.lookup(inst.cluster_table, node()) do
      [{_, sessions, report}] -> {sessions, report}
      [] -> {0, nil}
    end
  rescue
    ArgumentError -> {0, nil}
  end

  defp rows(inst) do
    :ets.tab2list(inst.cluster_table)
  rescue
    ArgumentError -> []
  end

  # One more session on `node` until its next report says how many it has.
  defp bump(inst, node) do
    :ets.update_counter(inst.cluster_table, node, {2, 1}, {node, 0, nil})
  rescue
    ArgumentError -> :ok
  end

  defp members(scope, group) do
    :pg.get_members(scope, group)
  catch
    _, _ -> []
  end

  ## Where sessions live --------------------------------------------------------------------

  @doc false
  # The other connected nodes that run the instance (members of its :pg scope).
  @spec others(Instance.t()) :: [node()]
  def others(inst) do
    here = node()

    inst.scope
    |> members(:members)
    |> Enum.map(&node/1)
    |> Enum.reject(&(&1 == here))
    |> Enum.uniq()
  end

  @doc false
  # The node whose session store holds session `id` as its own (its home), among the other
  # nodes of the cluster; asked of all of them at once, waiting at most `timeout` (and
  # Defaults.cluster_timeout/0). Best effort: a session being opened right now elsewhere
  # is not found.
  @spec locate(Instance.t(), String.t(), timeout()) :: {:ok, node()} | :not_found
  def locate(inst, id, timeout) do
    case others(inst) do
      [] ->
        :not_found

      nodes ->
        wait = min(timeout, Defaults.cluster_timeout())

        nodes
        |> :erpc.multicall(Snakeport.Sessions, :home?, [inst.name, id], wait)
        |> Enum.zip(nodes)
        |> Enum.find_value(:not_found, fn
          {{:ok, true}, node} -> {:ok, node}
          _ -> nil
        end)
    end
  end

  @doc false
  # A worker entry of another node as this node's callers use it: what reaches the worker
  # through its courier (Snakeport.Worker.request/4 on a `:remote` entry), none of the
  # worker's node-local tables, counters or port.
  @spec remote_entry(Snakeport.Worker.entry(), node()) :: map()
  def remote_entry(%{remote: _} = entry, _node), do: entry

  def remote_entry(entry, node) do
    %{
      remote: node,
      instance: entry.instance,
      index: entry.index,
      pid: entry.pid,
      courier: entry.courier,
      os_pid: entry.os_pid,
      max_frame_bytes: entry.max_frame_bytes
    }
  end

  ## Server ----------------------------------------------------------------------------------

  @doc false
  def start_link(%{names: names, config: config}),
    do: GenServer.start_link(__MODULE__, {names, config}, name: names.cluster)

  @impl true
  def init({names, config}) do
    :ets.new(names.cluster_table, [
      :named_table,
      :public,
      :set,
      read_concurrency: true,
      write_concurrency: true
    ])

    :ok = :pg.join(names.scope, :members, self())

    {watch, members} =
      if function_exported?(:pg, :monitor_scope, 1) do
        {ref, groups} = :pg.monitor_scope(names.scope)
        {ref, Map.get(groups, :members, [])}
      else
        {nil, :pg.get_members(names.scope, :members)}
      end

    state = %{
      names: names,
      tags: config.tags,
      pool_size: config.pool_size,
      watch: watch,
      # member pid (of another node) => its node
      members: %{}
    }

    send(self(), :report)
    {:ok, reconcile(state, members)}
  end

  @impl true
  # pg: members joined or left the scope's groups. Only :members matters here (placement
  # reads :workers from pg itself).
  def handle_info({ref, :join, :members, pids}, %{watch: ref} = state) do
    {:noreply, joined(state, pids)}
  end

  def handle_info({ref, :leave, :members, pids}, %{watch: ref} = state) do
    {:noreply, left(state, pids)}
  end

  def handle_info({ref, _join_or_leave, _group, _pids}, %{watch: ref} = state),
    do: {:noreply, state}

  # Time for this node's report (and, without pg notifications, a look at the members).
  def handle_info(:report, state) do
    Process.send_after(self(), :report, @interval)

    state =
      if state.watch, do: state, else: reconcile(state, members(state.names.scope, :members))

    report = report(state)
    :ets.insert(state.names.cluster_table, {node(), report.sessions, report})
    Enum.each(state.members, fn {pid, _node} -> send(pid, {:load, report}) end)
    {:noreply, state}
  end

  # Another node's report.
  def handle_info({:load, %{node: node, sessions: sessions} = report}, state) do
    if node != node() and node in Node.list(),
      do: :ets.insert(state.names.cluster_table, {node, sessions, report})

    {:noreply, state}
  end

  def handle_info(msg, state) do
    Logger.debug("Snakeport cluster: unexpected message #{inspect(msg, limit: 10)}")
    {:noreply, state}
  end

  defp reconcile(state, pids) do
    current = pids |> Enum.reject(&(node(&1) == node())) |> MapSet.new()
    known = state.members |> Map.keys() |> MapSet.new()

    state
    |> left(MapSet.to_list(MapSet.difference(known, current)))
    |> joined(MapSet.to_list(MapSet.difference(current, known)))
  end

  defp joined(state, pids) do
    pids
    |> Enum.reject(&(node(&1) == node() or Map.has_key?(state.members, &1)))
    |> Enum.reduce(state, fn pid, state ->
      # The newcomer learns this node's load at once.
      send(pid, {:load, report(state)})
      event(state, :node_up, node(pid))
      %{state | members: Map.put(state.members, pid, node(pid))}
    end)
  end

  defp left(state, pids) do
    Enum.reduce(pids, state, fn pid, state ->
      case Map.pop(state.members, pid) do
        {nil, _} ->
          state

        {node, members} ->
          if node not in Map.values(members) do
            :ets.delete(state.names.cluster_table, node)
            event(state, :node_down, node)
          end

          %{state | members: members}
      end
    end)
  end

  defp event(state, what, node) do
    Telemetry.execute([:snakeport, :cluster, what], %{system_time: System.system_time()}, %{
      instance: state.names.name,
      node: node
    })
  end

  # This node's report: its ready workers (sessions homed on each, requests in flight,
  # stuck or not) and the instance's tags.
  defp report(state) do
    names = state.names

    per_worker =
      try do
        {:ok, _total, per_worker} = Server.counts(names.server, @counts_timeout)
        per_worker
      catch
        :exit, _ -> %{}
      end

    workers =
      for row <- Pool.rows(names.pool_table) do
        entry = row.entry

        %{
          index: entry.index,
          pid: entry.pid,
          os_pid: entry.os_pid,
          sessions: Map.get(per_worker, entry.pid, 0),
          pending: :ets.info(entry.pending, :size) || 0,
          stuck: row.stuck_since != nil
        }
      end

    %{
      node: node(),
      member: self(),
      tags: state.tags,
      pool_size: state.pool_size,
      workers: workers,
      sessions: workers |> Enum.map(& &1.sessions) |> Enum.sum()
    }
  end
end
