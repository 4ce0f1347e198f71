defmodule Bench.Reference do
  @moduledoc """
  The machine reference printed with every run, so that runs on different machines (and
  regimes) can be compared: the best of 5 runs of a fixed pure-Python loop (in the
  interpreter the worker uses, started as a Port in the benchmark's own regime) and of a
  fixed Erlang loop (in this VM).
  """

  # x += i for i in range(10**6), timed inside the interpreter (no start-up cost).
  @python_loop """
  import time
  def f():
      x = 0
      for i in range(1_000_000):
          x += i
      return x
  best = None
  for _ in range(5):
      t = time.perf_counter()
      f()
      t = time.perf_counter() - t
      best = t if best is None or t < best else best
  print(best * 1000)
  """

  @doc "ms of the Python loop (best of 5)."
  def python_ms(python) do
    {out, 0} = System.cmd(python, ["-c", @python_loop])
    out |> String.trim() |> String.to_float()
  end

  @doc "ms of the Erlang loop: a tail-recursive sum of 10^7 integers (best of 5)."
  def erlang_ms do
    for(_ <- 1..5, do: :timer.tc(fn -> sum(10_000_000, 0) end) |> elem(0))
    |> Enum.min()
    |> Kernel./(1000)
  end

  defp sum(0, acc), do: acc
  defp sum(n, acc), do: sum(n - 1, acc + n)
end
