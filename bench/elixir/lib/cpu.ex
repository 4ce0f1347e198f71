defmodule Bench.Cpu do
  @moduledoc """
  CPU time of OS processes, for the CPU µs per call next to every rate.

  A process's CPU time is the sum over its threads of the first field of
  `/proc/PID/task/TID/schedstat` (nanoseconds on the CPU, exact, unlike the 10 ms ticks of
  `/proc/PID/stat`). Threads that exit during a block take their time with them; the worker
  and the BEAM keep theirs for their lifetime, and the floor has one thread.

  `measure/2` wraps one timed block: the CPU of the BEAM (`System.pid/0`, all its threads:
  schedulers, their busy waits, the I/O poller, the port's writes) and of the given Python
  processes, before and after.
  """

  @doc "CPU nanoseconds of all threads of `os_pid` (0 when it is gone)."
  @spec ns(String.t() | integer()) :: non_neg_integer()
  def ns(os_pid) do
    Path.wildcard("/proc/#{os_pid}/task/*/schedstat")
    |> Enum.reduce(0, fn file, acc ->
      case File.read(file) do
        {:ok, text} -> acc + (text |> :binary.split(" ") |> hd() |> String.to_integer())
        _ -> acc
      end
    end)
  end

  @doc "The BEAM's own OS pid."
  def beam, do: System.pid()

  @doc """
  Runs `fun` (which returns a batch, see `Bench.Stats`) and returns `{batch, cpu}`, `cpu`
  being `%{py: ns, beam: ns}`: the CPU time the Python processes `py_pids` and the BEAM
  spent meanwhile.
  """
  def measure(py_pids, fun) do
    b0 = ns(beam())
    p0 = Enum.map(py_pids, &ns/1)
    batch = fun.()
    p1 = Enum.map(py_pids, &ns/1)
    b1 = ns(beam())
    py = Enum.zip(p0, p1) |> Enum.map(fn {a, b} -> b - a end) |> Enum.sum()
    {batch, %{py: py, beam: b1 - b0}}
  end

  @doc "The CPUs a process may run on (`Cpus_allowed_list` of /proc/PID/status)."
  def affinity(os_pid) do
    case File.read("/proc/#{os_pid}/status") do
      {:ok, text} ->
        Regex.run(~r/^Cpus_allowed_list:\s*(\S+)/m, text, capture: :all_but_first)
        |> case do
          [list] -> list
          _ -> "?"
        end

      _ ->
        "?"
    end
  end
end
