defmodule Bench.PacketPort do
  @moduledoc """
  Opens a program as a `{packet, 4}` Port with the options `Snakeport.Worker` uses for its
  worker Port, so that the floor and the raw worker are measured exactly the way the harness
  talks to Python.
  """

  @doc "Opens `python args...` as a Port; the calling process becomes its owner."
  @spec open(String.t(), [String.t()], [{charlist(), charlist()}]) :: port()
  def open(python, args, env) do
    Port.open({:spawn_executable, python}, [
      {:packet, 4},
      :binary,
      :exit_status,
      :use_stdio,
      :hide,
      {:args, args},
      {:env, env}
    ])
  end
end
