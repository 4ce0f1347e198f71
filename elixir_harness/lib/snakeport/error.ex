defmodule Snakeport.Error do
  @moduledoc """
  The one error type of Snakeport: every `{:error, _}` carries a `%Snakeport.Error{}`, and
  every `!` function raises that same struct.

  Fields:

    * `:reason` - an atom saying what went wrong (see below).
    * `:message` - a human-readable explanation.
    * `:python_type` - the qualified Python exception type (`"builtins.ZeroDivisionError"`)
      when Python raised, else `nil`.
    * `:traceback` - the formatted Python traceback lines (`[]` when none).
    * `:details` - a map with extra data (e.g. `%{limit: 10000}`), `%{}` when none.

  Reasons reported by the Python worker: `:python_error`, `:ref_not_found`, `:ref_released`,
  `:session_mismatch`, `:session_not_found`, `:max_refs_exceeded`, `:bad_request` (also
  when the worker refuses to open a session, e.g. tags it cannot decode), `:frame_too_large`,
  `:decode_error`, `:not_encodable`, `:cancelled`, `:import_error`, `:attribute_error`,
  `:shutting_down`, `:not_allowed` (the instance's `:allow` list refuses the name, or an
  object the request reached: see *Security* in `Snakeport`).

  Reasons raised by the harness: `:timeout` (the call took longer than its timeout; the
  worker was asked to cancel it), `:worker_exited` (the worker process died while the request
  was in flight), `:session_lost` (the session lived on a worker that has since died, so its
  refs are gone), `:session_quota_exceeded` (the session store is full), `:unsafe_term` (the
  reply names an atom this VM does not know; atoms are never created from worker output),
  `:protocol_error` (a malformed reply), `:no_workers` (no worker is running: they are
  starting or restarting), `:not_started` (the instance is not running),
  `:worker_start_failed`, `:session_store_exited` (the session store crashed during the
  call; it is restarted), `:bad_argument` (a `:session` that is neither a session id nor a
  `%Snakeport.SessionContext{}`), `:instance_mismatch` (a ref or session context of one
  Snakeport instance used in a request to another), `:frame_too_large` (a request above the
  worker's frame limit, refused before it is sent), `:session_options_conflict` (a request
  states session limits - `:max_refs`, `:ttl_seconds`, `:overflow`, `:tags` - that differ
  from those of the existing session; `details.conflicts` maps each to `{session's, asked}`). `:timeout` is also returned when the
  session store itself does not answer in time (the message names it).

  ## Examples

      iex> error = %Snakeport.Error{reason: :timeout, message: "call timed out after 100 ms"}
      iex> Exception.message(error)
      "timeout: call timed out after 100 ms"

      iex> error = %Snakeport.Error{
      ...>   reason: :python_error,
      ...>   message: "division by zero",
      ...>   python_type: "builtins.ZeroDivisionError"
      ...> }
      iex> Exception.message(error)
      "builtins.ZeroDivisionError: division by zero"
  """

  @type reason :: atom()

  @type t :: %__MODULE__{
          reason: reason(),
          message: String.t(),
          python_type: String.t() | nil,
          traceback: [String.t()],
          details: map()
        }

  defexception reason: :error, message: "", python_type: nil, traceback: [], details: %{}

  @doc ~S"""
  Formats the error: `"Type: message"` for a Python exception, followed by its traceback
  as Python prints it (one line per line), `"reason: message"` otherwise.

      iex> error = %Snakeport.Error{
      ...>   reason: :python_error,
      ...>   message: "3",
      ...>   python_type: "builtins.KeyError",
      ...>   traceback: [
      ...>     "Traceback (most recent call last):",
      ...>     "  File \"m.py\", line 2, in f",
      ...>     "    return d[k]",
      ...>     "KeyError: 3"
      ...>   ]
      ...> }
      iex> Exception.message(error) |> String.split("\n")
      [
        "builtins.KeyError: 3",
        "",
        "Traceback (most recent call last):",
        "  File \"m.py\", line 2, in f",
        "    return d[k]",
        "KeyError: 3"
      ]
  """
  @impl true
  @spec message(t()) :: String.t()
  def message(%__MODULE__{python_type: type, message: message, traceback: tb})
      when is_binary(type) do
    head = "#{type}: #{message}"

    case tb do
      [_ | _] -> head <> "\n\n" <> format_tb(tb)
      _ -> head
    end
  end

  def message(%__MODULE__{reason: reason, message: message}), do: "#{reason}: #{message}"

  # The worker sends the traceback's lines without their line ends; a line that has one
  # (as the chunks of Python's traceback.format_exception do) is not doubled.
  defp format_tb(lines) do
    lines
    |> Enum.map(&(&1 |> to_string() |> String.trim_trailing("\n")))
    |> Enum.join("\n")
  end

  @doc false
  @spec new(reason(), String.t(), map()) :: t()
  def new(reason, message, details \\ %{}) when is_atom(reason) and is_binary(message) do
    %__MODULE__{reason: reason, message: message, details: details}
  end

  @doc false
  # Builds the struct from the worker's error map; tolerant of missing or odd fields.
  @spec from_wire(term()) :: t()
  def from_wire(%{} = map) do
    reason = Map.get(map, :reason)
    type = Map.get(map, :type)
    tb = Map.get(map, :traceback)
    details = Map.get(map, :details)

    %__MODULE__{
      reason: if(is_atom(reason) and reason != nil, do: reason, else: :protocol_error),
      message: text(Map.get(map, :message)),
      python_type: if(is_binary(type), do: type, else: nil),
      traceback: if(is_list(tb), do: Enum.filter(tb, &is_binary/1), else: []),
      details: if(is_map(details), do: details, else: %{})
    }
  end

  def from_wire(other) do
    new(:protocol_error, "the worker sent a malformed error: #{inspect(other, limit: 20)}")
  end

  defp text(message) when is_binary(message), do: message
  defp text(nil), do: ""
  defp text(other), do: inspect(other)
end
