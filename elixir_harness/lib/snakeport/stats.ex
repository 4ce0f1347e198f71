defmodule Snakeport.Stats do
  @moduledoc false
  # Snakeport.stats/1, from the harness's own state first: the session store's counts, the
  # Pool's rows (ready workers, which are stuck, the last stats each worker answered) and
  # each worker's pending table. The workers' own stats are asked of every worker that is
  # not stuck, all at once, and waited for until one deadline (the :timeout option,
  # Defaults.stats_timeout/0 ms by default): a worker that holds the GIL cannot answer, and
  # is then described with the last stats it gave (`stats_age_ms` says how old) and status
  # :busy. So stats/1 never waits for a busy worker longer than that.
  #
  # The cluster view (cluster/3): the other nodes running the instance (Snakeport.Cluster)
  # are asked for their own collect/2 at once (:erpc.multicall, the same deadline plus a
  # margin for the hop), while this node collects its own; a node that does not answer
  # is listed with `status: :unreachable`.

  alias Snakeport.{Client, Defaults, Instance, Pool, Protocol, Sessions, Worker}
  alias Snakeport.Sessions.Server

  @store_timeout Defaults.store_timeout()
  @hop_margin 1_000
  @python_keys [
    :sessions,
    :refs,
    :rss_bytes,
    :uptime_ms,
    :threads,
    :in_flight,
    :requests,
    :fast_path
  ]

  @doc false
  # Snakeport.stats/1: this node's stats, with `:cluster` (every node's) when `cluster`.
  @spec stats(Instance.t(), timeout(), boolean()) ::
          {:ok, map()} | {:error, Snakeport.Error.t()}
  def stats(inst, timeout, cluster) do
    others = if cluster, do: Snakeport.Cluster.others(inst), else: []

    # The other nodes collect while this one does.
    asked =
      if others != [] do
        wait = if timeout == :infinity, do: :infinity, else: timeout + @hop_margin

        Task.async(fn ->
          Enum.zip(
            others,
            :erpc.multicall(others, __MODULE__, :collect_here, [inst.name, timeout], wait)
          )
        end)
      end

    with {:ok, local} <- collect(inst, timeout) do
      if cluster do
        remote = if asked, do: Task.await(asked, :infinity), else: []
        {:ok, Map.put(local, :cluster, combine([local | Enum.map(remote, &remote_node/1)]))}
      else
        {:ok, local}
      end
    end
  end

  @doc false
  # collect/2 on this node, for another node's stats/3.
  @spec collect_here(atom(), timeout()) :: {:ok, map()} | {:error, Snakeport.Error.t()}
  def collect_here(name, timeout) do
    with {:ok, inst} <- Instance.fetch(name), do: collect(inst, timeout)
  end

  defp remote_node({node, {:ok, {:ok, stats}}}),
    do: Map.put(stats, :status, :up) |> Map.put(:node, node)

  defp remote_node({node, other}) do
    reason =
      case other do
        {:ok, {:error, error}} -> error
        {_class, reason} -> reason
      end

    %{node: node, status: :unreachable, reason: reason}
  end

  defp combine(nodes) do
    up = Enum.filter(nodes, &(Map.get(&1, :status, :up) == :up))
    sum = fn key -> up |> Enum.map(&(Map.get(&1, key) || 0)) |> Enum.sum() end

    %{
      nodes: Enum.map(nodes, &Map.put_new(&1, :status, :up)),
      pool_size: sum.(:pool_size),
      sessions: sum.(:sessions),
      python_sessions: sum.(:python_sessions),
      refs: sum.(:refs),
      in_flight: sum.(:in_flight),
      requests: sum.(:requests),
      rss_bytes: sum.(:rss_bytes)
    }
  end

  @doc false
  @spec collect(Instance.t(), timeout()) :: {:ok, map()} | {:error, Snakeport.Error.t()}
  def collect(inst, timeout) do
    with {:ok, total, per_worker} <- counts(inst) do
      now = System.monotonic_time(:millisecond)
      deadline = if timeout == :infinity, do: :infinity, else: now + timeout

      asked =
        for row <- Pool.rows(inst.pool_table) do
          sent =
            if row.stuck_since,
              do: nil,
              else: Worker.send_request(row.entry, Protocol.stats(), nil, [:nosuspend])

          {row, sent}
        end

      up =
        for {row, sent} <- asked, into: %{} do
          {row.entry.index,
           describe(inst, row, sent, deadline, Map.get(per_worker, row.entry.pid, 0))}
        end

      pool_size = max(inst.pool_size, map_size(up))

      workers =
        for index <- 0..(pool_size - 1)//1 do
          Map.get_lazy(up, index, fn ->
            %{
              index: index,
              node: node(),
              status: :down,
              os_pid: nil,
              harness_sessions: 0,
              pending: 0
            }
            |> Map.merge(Map.new(@python_keys, &{&1, nil}))
            |> Map.put(:stats_age_ms, nil)
          end)
        end

      sum = fn key -> workers |> Enum.map(&(Map.get(&1, key) || 0)) |> Enum.sum() end

      {:ok,
       %{
         instance: inst.name,
         node: node(),
         tags: inst.tags,
         pool_size: pool_size,
         sessions: total,
         python_sessions: sum.(:sessions),
         refs: sum.(:refs),
         in_flight: sum.(:in_flight),
         requests: sum.(:requests),
         rss_bytes: sum.(:rss_bytes),
         workers: workers
       }}
    end
  end

  defp describe(inst, row, sent, deadline, harness_sessions) do
    entry = row.entry

    base = %{
      index: entry.index,
      node: node(),
      os_pid: entry.os_pid,
      python: Map.get(row.info, :python),
      snakeport: Map.get(row.info, :snakeport),
      harness_sessions: harness_sessions,
      # Requests sent and not answered yet, as the harness sees them.
      pending: :ets.info(entry.pending, :size) || 0
    }

    fresh =
      with {:ok, handle} <- sent || :stuck,
           {:ok, stats} <- Protocol.stats_map(Client.await_reply(entry, handle, left(deadline))) do
        stats = Map.take(stats, @python_keys)
        Pool.cache_stats(inst.pool_table, entry, stats)
        stats
      else
        _ -> nil
      end

    now = System.monotonic_time(:millisecond)

    {status, python, age} =
      cond do
        fresh != nil -> {:up, fresh, 0}
        row.stats != nil -> {:busy, elem(row.stats, 1), now - elem(row.stats, 0)}
        true -> {:busy, Map.new(@python_keys, &{&1, nil}), nil}
      end

    status = if row.stuck_since, do: :stuck, else: status

    base
    |> Map.merge(python)
    |> Map.merge(%{status: status, stats_age_ms: age})
    |> Map.put(:stuck_ms, row.stuck_since && now - row.stuck_since)
  end

  defp left(:infinity), do: :infinity
  defp left(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)

  defp counts(inst) do
    Server.counts(inst.server, @store_timeout)
  catch
    :exit, reason -> {:error, Sessions.exit_error(inst, reason, @store_timeout)}
  end
end
