defmodule Bench.Cluster do
  @moduledoc """
  Helpers of the cluster benchmark (cluster.exs): the distribution floor (a process on
  node B that echoes messages back to node A) and the CPU time of the OS processes
  involved (the two VMs and B's Python worker), read from `/proc` on this machine with
  `Bench.Cpu.ns/1`.
  """

  alias Bench.Stats

  @doc "The echo loop (spawned on node B): sends `term` back to `from`."
  def loop do
    receive do
      {from, term} ->
        send(from, term)
        loop()
    end
  end

  @doc "A batch of `n` sequential round trips to `echo`, each timed."
  def echo(echo, n) do
    Stats.sequential(n, fn ->
      ref = make_ref()
      send(echo, {self(), ref})
      receive do: (^ref -> :ok)
    end)
  end

  @doc """
  Runs `fun` (which returns a batch, see `Bench.Stats`) and returns `{batch, cpu}`:
  `cpu` maps each name of `os_pids` (`%{name => os_pid}`) to the CPU µs that process
  spent per call (per unit of the batch) meanwhile.
  """
  def measure(os_pids, fun) do
    before = Map.new(os_pids, fn {name, pid} -> {name, Bench.Cpu.ns(pid)} end)
    {amount, _, _} = batch = fun.()
    after_ = Map.new(os_pids, fn {name, pid} -> {name, Bench.Cpu.ns(pid)} end)

    {batch,
     Map.new(os_pids, fn {name, _} -> {name, (after_[name] - before[name]) / 1000 / amount} end)}
  end
end
