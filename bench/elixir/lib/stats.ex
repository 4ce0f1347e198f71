defmodule Bench.Stats do
  @moduledoc """
  Timing helpers. A measurement is a *batch* `{amount, elapsed_native, latencies}` (amount:
  calls, or MiB for echoes); `rate/1` and `latency/1` combine lists of batches, and
  `alternate/2` (used by profile.exs) runs the batches of several variants in turn.
  """

  def now, do: System.monotonic_time()
  def to_us(native), do: System.convert_time_unit(native, :native, :nanosecond) / 1000
  def to_ms(native), do: to_us(native) / 1000
  def to_s(native), do: to_us(native) / 1_000_000

  def median(xs) do
    sorted = Enum.sort(xs)
    n = length(sorted)
    mid = div(n, 2)

    if rem(n, 2) == 1,
      do: Enum.at(sorted, mid),
      else: (Enum.at(sorted, mid - 1) + Enum.at(sorted, mid)) / 2
  end

  # Nearest-rank percentile of a sorted list, `p` in 0..1.
  def percentile(sorted, p),
    do: Enum.at(sorted, min(length(sorted) - 1, floor(p * length(sorted))))

  @doc "Runs every variant's batch function `times` times, in turn: `%{name => [batch]}`."
  def alternate(times, variants) do
    for _ <- 1..times, {name, fun} <- variants, reduce: %{} do
      acc -> Map.update(acc, name, [fun.()], &[fun.() | &1])
    end
  end

  @doc "Total amount per second of a list of batches."
  def rate(batches) do
    {amount, elapsed} = Enum.reduce(batches, {0, 0}, fn {a, e, _}, {sa, se} -> {sa + a, se + e} end)

    amount / to_s(elapsed)
  end

  @doc "p50 and p99 (µs) of the latencies of a list of batches."
  def latency(batches) do
    sorted = batches |> Enum.flat_map(&elem(&1, 2)) |> Enum.sort()
    %{p50_us: to_us(percentile(sorted, 0.50)), p99_us: to_us(percentile(sorted, 0.99))}
  end

  @doc "A batch: `fun` run `n` times from this process, each run timed."
  def sequential(n, fun) do
    t0 = now()
    latencies = loop(n, fun, [])
    {n, now() - t0, latencies}
  end

  defp loop(0, _fun, acc), do: acc

  defp loop(n, fun, acc) do
    t = now()
    fun.()
    loop(n - 1, fun, [now() - t | acc])
  end

  @doc "A batch of `n` runs of `fun` (untimed individually), `amount` counted per run."
  def repeat(n, amount, fun) do
    t0 = now()
    for _ <- 1..n, do: fun.()
    {n * amount, now() - t0, []}
  end

  @doc """
  A batch: `callers` processes each run `fun.(index)` `per_caller` times, timed from the
  moment all are released to the moment the last one is done. Each caller first runs
  `warmup.(index)` once (untimed, e.g. to create its session). Messages this process gets
  meanwhile, other than the callers' own, go to `on_message.(msg, pids)` (the floor's port
  owner routes the echoes that way).
  """
  def concurrent(callers, per_caller, fun, opts \\ []) do
    warmup = Keyword.get(opts, :warmup, fn _ -> :ok end)

    on_message = Keyword.get(opts, :on_message, fn msg, _ -> raise "unexpected #{inspect(msg)}" end)

    parent = self()
    tag = make_ref()

    pids =
      for i <- 0..(callers - 1) do
        spawn_link(fn ->
          warmup.(i)
          send(parent, {tag, :ready})
          receive do: ({^tag, :go} -> :ok)
          for _ <- 1..per_caller, do: fun.(i)
          send(parent, {tag, :done})
        end)
      end

    pid_tuple = List.to_tuple(pids)
    wait(tag, :ready, callers, on_message, pid_tuple)
    t0 = now()
    Enum.each(pids, &send(&1, {tag, :go}))
    wait(tag, :done, callers, on_message, pid_tuple)
    {callers * per_caller, now() - t0, []}
  end

  defp wait(_tag, _what, 0, _on_message, _pids), do: :ok

  defp wait(tag, what, n, on_message, pids) do
    receive do
      {^tag, ^what} ->
        wait(tag, what, n - 1, on_message, pids)

      other ->
        on_message.(other, pids)
        wait(tag, what, n, on_message, pids)
    end
  end
end
