defmodule Snakeport.LogCatcher do
  @moduledoc """
  An Erlang `:logger` handler for the tests: forwards the log events of one Snakeport
  instance (metadata `instance`) to a process as `{:log, level, message, metadata}`, so that
  tests can look at the metadata that `ExUnit.CaptureLog` does not print.
  """

  @doc "Attaches a handler forwarding `instance`'s logs to the caller; removed when the test ends."
  def attach(instance) do
    id = :"snakeport_log_catcher_#{System.unique_integer([:positive])}"
    :ok = :logger.add_handler(id, __MODULE__, %{config: %{pid: self(), instance: instance}})
    ExUnit.Callbacks.on_exit(fn -> :logger.remove_handler(id) end)
    id
  end

  @doc false
  def log(%{level: level, msg: msg, meta: meta}, %{config: %{pid: pid, instance: instance}}) do
    if meta[:instance] == instance, do: send(pid, {:log, level, text(msg), meta})
  end

  defp text({:string, chardata}), do: IO.chardata_to_string(chardata)
  defp text({format, args}) when is_list(args), do: format |> :io_lib.format(args) |> to_string()
  defp text(other), do: inspect(other)
end
