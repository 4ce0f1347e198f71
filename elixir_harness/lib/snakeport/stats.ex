defmodule Snakeport.Stats do
  @moduledoc false
  # Snakeport.stats/1: the session store's counts and every ready worker's own `stats`
  # (asked of all workers at once, each bounded by the timeout), aggregated.

  alias Snakeport.{Client, Defaults, Instance, Pool, Protocol, Sessions, Worker}
  alias Snakeport.Sessions.Server

  @store_timeout Defaults.store_timeout()

  @doc false
  @spec collect(Instance.t(), timeout()) :: {:ok, map()} | {:error, Snakeport.Error.t()}
  def collect(inst, timeout) do
    with {:ok, total, per_worker} <- counts(inst) do
      pending =
        for {entry, info} <- Pool.infos(inst.pool_table) do
          {entry, info, Worker.send_request(entry, Protocol.stats(), nil)}
        end

      up =
        for {entry, info, sent} <- pending, into: %{} do
          base = %{
            index: entry.index,
            os_pid: entry.os_pid,
            status: :up,
            python: Map.get(info, :python),
            snakeport: Map.get(info, :snakeport),
            harness_sessions: Map.get(per_worker, entry.pid, 0)
          }

          stats =
            with {:ok, handle} <- sent,
                 {:ok, stats} <- Protocol.stats_map(Client.await_reply(entry, handle, timeout)) do
              Map.merge(stats, base)
            else
              _ -> Map.merge(base, %{status: :down, sessions: 0, refs: 0})
            end

          {entry.index, stats}
        end

      pool_size = max(inst.pool_size, map_size(up))

      workers =
        for index <- 0..(pool_size - 1)//1 do
          Map.get(up, index, %{
            index: index,
            status: :down,
            os_pid: nil,
            sessions: 0,
            refs: 0,
            harness_sessions: 0
          })
        end

      sum = fn key -> workers |> Enum.map(&(Map.get(&1, key) || 0)) |> Enum.sum() end

      {:ok,
       %{
         instance: inst.name,
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

  defp counts(inst) do
    Server.counts(inst.server, @store_timeout)
  catch
    :exit, reason -> {:error, Sessions.exit_error(inst, reason, @store_timeout)}
  end
end
