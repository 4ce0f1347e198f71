defmodule Snakeport.PythonLogs do
  @moduledoc false
  # Python's output in Elixir's Logger: the worker's `log` events (docs/PROTOCOL.md, *Python's
  # output*), one per `logging` record, warning, or line written to fd 1 or 2 (and one per
  # report of lines the worker's rate limit dropped), become Logger calls in the worker's
  # port owner (Snakeport.Worker), at the matching level:
  #
  #   Python level < 20 (DEBUG) -> :debug, < 30 (INFO) -> :info, < 40 (WARNING) -> :warning,
  #   < 50 (ERROR) -> :error, else :critical. Lines of fd 1 arrive as INFO, of fd 2 as WARNING.
  #
  # The message is tagged with its origin ("[python:my.logger] ...", "[python:stdout] ...",
  # "[python:warnings] ...", "[python:stderr] ...", "[python] ..." for the worker's reports)
  # and the metadata says where it comes from: `instance`, `worker` (index), `os_pid`,
  # `python_source` (:logging, :warnings, :stdout, :stderr, :snakeport), `python_logger`,
  # and for records logged by a call, its `session_id` and `python_request_id` (named so as
  # not to clash with Plug's `request_id`); a report of dropped lines has `dropped`.
  #
  # Bounded by the worker (rate limit, lines cut at 16 KiB): this process never sees more
  # than about a thousand events a second per worker.

  require Logger

  @doc false
  # Logs one `log` event of worker `entry` (measurements and metadata as decoded).
  @spec log(map(), map(), map()) :: :ok
  def log(entry, measurements, meta) do
    source = Map.get(meta, :source)
    message = text(Map.get(meta, :message))

    metadata =
      [
        instance: entry.instance,
        worker: entry.index,
        os_pid: entry.os_pid,
        python_source: source
      ]
      |> put(:python_logger, Map.get(meta, :logger))
      |> put(:session_id, Map.get(meta, :session))
      |> put(:python_request_id, Map.get(meta, :request_id))
      |> put(:dropped, Map.get(measurements, :dropped))

    Logger.bare_log(level(Map.get(meta, :level)), [tag(source, meta), message], metadata)
  end

  @doc false
  # Logger's level for a Python level number.
  @spec level(term()) :: :debug | :info | :warning | :error | :critical
  def level(n) when is_integer(n) and n < 20, do: :debug
  def level(n) when is_integer(n) and n < 30, do: :info
  def level(n) when is_integer(n) and n < 40, do: :warning
  def level(n) when is_integer(n) and n < 50, do: :error
  def level(n) when is_integer(n), do: :critical
  def level(_), do: :info

  defp tag(:logging, %{logger: logger}) when is_binary(logger), do: ["[python:", logger, "] "]
  defp tag(:snakeport, _meta), do: "[python] "
  defp tag(source, _meta) when is_atom(source), do: ["[python:", Atom.to_string(source), "] "]
  defp tag(_source, _meta), do: "[python] "

  defp text(message) when is_binary(message), do: message
  defp text(other), do: inspect(other, limit: 20)

  defp put(metadata, _key, nil), do: metadata
  defp put(metadata, key, value), do: [{key, value} | metadata]
end
