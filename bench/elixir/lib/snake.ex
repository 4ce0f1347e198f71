defmodule Bench.Snake do
  @moduledoc """
  Snakeport measured through its public API (plus a raw-Port cold start). The measuring
  functions return batches (see `Bench.Stats`).
  """

  alias Bench.Stats
  alias Snakeport.SessionContext

  @helpers Path.expand("../../python", __DIR__)

  @doc """
  Starts an instance (not linked to the caller; `extra[:name]` names it, default
  `Snakeport`); ms from start to the first call's reply.
  """
  def start(python, env, extra) do
    t0 = Stats.now()
    opts = Keyword.merge([python: python, python_path: [@helpers], env: env], extra)
    {:ok, pid} = Snakeport.start_link(opts)
    Process.unlink(pid)
    add(instance_opts(extra[:name]))
    Stats.to_ms(Stats.now() - t0)
  end

  @doc "Stops the instance `name`."
  def stop(name \\ Snakeport), do: Supervisor.stop(Module.concat(name, "Supervisor"))

  @doc "The OS pids of the instance's workers (`opts`: `[]` or `[instance: name]`)."
  def worker_pids(opts \\ []), do: for(w <- Snakeport.stats!(opts).workers, do: w.os_pid)

  # The options that name an instance in calls: none for the default instance, so that the
  # headline figures measure `Snakeport.call/3` as most code calls it.
  defp instance_opts(nil), do: []
  defp instance_opts(name), do: [instance: name]

  @doc "The worker's default `--spin-us` (read from the worker's `_limits`)."
  def default_spin_us do
    python = System.get_env("SNAKEPORT_PYTHON") || Path.expand("../../../.venv/bin/python", __DIR__)
    code = "from snakeport import _limits; print(_limits.SPIN_US.default)"
    {out, 0} = System.cmd(python, ["-c", code])
    out |> String.trim() |> String.to_integer()
  end

  @doc "The other setting of the worker's polling: off when the default polls, else on (200 µs)."
  def alternative_spin_us, do: if(default_spin_us() == 0, do: 200, else: 0)

  def add(opts \\ []), do: {:ok, 3} = Snakeport.call("operator", "add", [1, 2], opts)

  def sequential(n, opts \\ []), do: Stats.sequential(n, fn -> add(opts) end)

  @doc "`callers` processes calling operator.add; each has its own (auto) session."
  def concurrent(callers, per_caller, opts \\ []),
    do: Stats.concurrent(callers, per_caller, fn _ -> add(opts) end, warmup: fn _ -> add(opts) end)

  @doc "Echoes `bin` (as Python bytes) through `bench_helpers.identity` `n` times (MiB)."
  def echo(bin, n, opts \\ []) do
    size = byte_size(bin)
    arg = Snakeport.bytes(bin)

    Stats.repeat(n, size / 1_048_576, fn ->
      {:ok, reply} = Snakeport.call("bench_helpers", "identity", [arg], opts)
      ^size = byte_size(reply)
    end)
  end

  @doc """
  `range(n)` streamed (`Snakeport.stream/4`, default batch size) into a consumer that sees
  every item, `times` times (items).
  """
  def stream_items(n, times) do
    Stats.repeat(times, n, fn ->
      sum = Snakeport.stream("builtins", "range", [n]) |> Enum.reduce(0, &(&1 + &2))
      ^sum = div(n * (n - 1), 2)
    end)
  end

  @doc "The same items as one list result (`list(range(n))`), through the same consumer."
  def list_items(n, times) do
    Stats.repeat(times, n, fn ->
      {:ok, list} = Snakeport.call("bench_helpers", "numbers", [n])
      sum = Enum.reduce(list, 0, &(&1 + &2))
      ^sum = div(n * (n - 1), 2)
    end)
  end

  @doc "Creates a ref, calls a method on it, releases it; `n` times, in a fresh process."
  def churn(n, opts \\ []) do
    task =
      Task.async(fn ->
        Stats.repeat(n, 1, fn ->
          i = :erlang.unique_integer([:positive])
          {:ok, ref} = Snakeport.call("bench_helpers", "Box", [i], opts)
          {:ok, ^i} = Snakeport.method(ref, "get")
          :ok = Snakeport.release_ref(ref)
        end)
      end)

    Task.await(task, :infinity)
  end

  @doc """
  A process with its own session creates `n` refs (one call returning a list of `n`
  objects) and holds them. Returns the worker's RSS then (bytes) and the ms from killing
  that process until `Snakeport.stats/0` reports 0 refs.
  """
  def release_latency(n) do
    parent = self()

    holder =
      spawn(fn ->
        SessionContext.with_session([max_refs: n], fn ->
          {:ok, refs} = Snakeport.call("bench_helpers", "make_objects", [n])
          ^n = length(refs)
          send(parent, {:holding, self()})
          Process.sleep(:infinity)
        end)
      end)

    receive do: ({:holding, ^holder} -> :ok)
    ^n = refs()
    rss = rss()
    t0 = Stats.now()
    Process.exit(holder, :kill)
    :ok = poll_refs_zero(t0 + System.convert_time_unit(10, :second, :native))
    {rss, Stats.to_ms(Stats.now() - t0)}
  end

  defp poll_refs_zero(deadline) do
    cond do
      refs() == 0 -> :ok
      Stats.now() > deadline -> raise "refs still held 10 s after their owner died"
      true -> poll_refs_zero(deadline)
    end
  end

  def refs, do: Snakeport.stats!().refs
  def rss, do: Snakeport.stats!().rss_bytes

  def versions do
    [w | _] = Snakeport.stats!().workers
    %{python: w.python, snakeport: w.snakeport, fast_path: w.fast_path}
  end

  @doc """
  Cold start of `python -m snakeport` opened as a raw Port with the worker's options: ms from
  `Port.open` to the ready frame and to the reply of a `ping` sent once it is ready.
  """
  def cold_start(python, env) do
    t0 = Stats.now()

    port =
      Bench.PacketPort.open(python, ["-m", "snakeport"], [
        {~c"PYTHONPATH", String.to_charlist(@helpers)} | env
      ])

    {:snakeport_ready, 1, _} =
      receive(do: ({^port, {:data, ready}} -> :erlang.binary_to_term(ready)))

    t_ready = Stats.now()
    Port.command(port, :erlang.term_to_binary({:ping, 1}))

    {:reply, 1, :ok, :pong} =
      receive(do: ({^port, {:data, reply}} -> :erlang.binary_to_term(reply)))

    t_ping = Stats.now()
    Bench.Floor.close(port)
    {Stats.to_ms(t_ready - t0), Stats.to_ms(t_ping - t0)}
  end

  @doc "ms for `python -c pass` opened as a Port, to its exit status."
  def python_pass(python, env) do
    t0 = Stats.now()

    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        :exit_status,
        :hide,
        {:args, ["-c", "pass"]},
        {:env, env}
      ])

    receive do: ({^port, {:exit_status, 0}} -> :ok)
    Stats.to_ms(Stats.now() - t0)
  end
end
