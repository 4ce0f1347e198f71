defmodule Bench.Floor do
  @moduledoc """
  The floor: `bench/floor_echo.py` (echoes `{packet, 4}` frames, no decoding, default pipes)
  opened as a Port with the options Snakeport.Worker uses for its worker Port. The calling
  process is the port owner. Each function returns a batch (see `Bench.Stats`).
  """

  alias Bench.Stats

  @script Path.expand("../../floor_echo.py", __DIR__)

  def open(python, env \\ []) do
    Bench.PacketPort.open(python, [@script], env)
  end

  @doc "The OS pid of the floor's Python process."
  def os_pid(port), do: port |> Port.info(:os_pid) |> elem(1)

  def close(port) do
    Port.close(port)
  rescue
    ArgumentError -> true
  end

  def roundtrip(port, frame) do
    Port.command(port, frame)
    receive do: ({^port, {:data, reply}} -> reply)
  end

  @doc "One process, one frame in flight."
  def sequential(port, n, frame), do: Stats.sequential(n, fn -> roundtrip(port, frame) end)

  @doc """
  `callers` processes, each writing its frames itself with `Port.command/2` and waiting for
  its echo, which this process (the port owner) routes back by the caller index carried in
  the first two bytes of the frame: Snakeport's transport (callers write, the owner routes
  raw reply frames) without its work.
  """
  def callers(port, callers, per_caller, frame) do
    Stats.concurrent(
      callers,
      per_caller,
      fn i ->
        Port.command(port, [<<i::16>>, frame])
        receive do: ({:echo, _} -> :ok)
      end,
      on_message: fn {^port, {:data, <<i::16, _::binary>> = reply}}, pids ->
        send(elem(pids, i), {:echo, reply})
      end
    )
  end

  @doc "A window of `depth` frames kept in flight by this one process, `total` frames in all."
  def window(port, total, depth, frame) do
    t0 = Stats.now()
    for _ <- 1..depth, do: Port.command(port, frame)
    window_loop(port, frame, total - depth, total)
    {total, Stats.now() - t0, []}
  end

  defp window_loop(_port, _frame, _to_send, 0), do: :ok

  defp window_loop(port, frame, to_send, to_receive) do
    receive do
      {^port, {:data, _}} ->
        if to_send > 0, do: Port.command(port, frame)
        window_loop(port, frame, to_send - 1, to_receive - 1)
    end
  end

  @doc "Echoes `bin` `n` times, one at a time (amount: MiB of payload)."
  def echo(port, bin, n) do
    size = byte_size(bin)
    Stats.repeat(n, size / 1_048_576, fn -> ^size = byte_size(roundtrip(port, bin)) end)
  end

  @doc "Cold start: ms from Port open to the first echo."
  def cold_start(python, env) do
    t0 = Stats.now()
    port = open(python, env)
    "hello" = roundtrip(port, "hello")
    ms = Stats.to_ms(Stats.now() - t0)
    close(port)
    ms
  end
end
