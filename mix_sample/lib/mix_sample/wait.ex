defmodule MixSample.Wait do
  @moduledoc """
  Bounded polling: re-check a condition until it holds or a deadline passes.

  Used where the harness reacts asynchronously (an owner's `:DOWN` message makes the
  session store tell the worker to release the session). Callers first synchronise on
  the event they caused (a monitor's `:DOWN`), then poll the observable state with a
  deadline; nothing relies on a fixed sleep being "long enough".
  """

  @doc """
  Calls `fun` until it returns `{:ok, value}`; returns `{:ok, value, elapsed_ms}`, or
  `{:timeout, last}` (the last non-ok result) once `timeout_ms` has passed.
  """
  @spec until((() -> {:ok, term} | term), non_neg_integer, pos_integer) ::
          {:ok, term, non_neg_integer} | {:timeout, term}
  def until(fun, timeout_ms \\ 5_000, interval_ms \\ 10) do
    started = System.monotonic_time(:millisecond)
    loop(fun, started, started + timeout_ms, interval_ms)
  end

  defp loop(fun, started, deadline, interval_ms) do
    case fun.() do
      {:ok, value} ->
        {:ok, value, System.monotonic_time(:millisecond) - started}

      other ->
        if System.monotonic_time(:millisecond) >= deadline do
          {:timeout, other}
        else
          receive do
          after
            interval_ms -> loop(fun, started, deadline, interval_ms)
          end
        end
    end
  end
end
