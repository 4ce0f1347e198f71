defmodule Snakeport.Arrow do
  @moduledoc """
  A table as the bytes of one Arrow IPC **stream**: what `result: :arrow` returns, and a
  value that arrives in Python as a pandas `DataFrame`.

  Under `result: :arrow` a call's result must be a table: a pandas `DataFrame` or `Series`
  (its index is kept in the schema's pandas metadata), a `pyarrow.Table` or `RecordBatch`, or
  anything `pyarrow.table()` accepts (a polars `DataFrame`, a dict of columns). The worker
  needs `pyarrow` for it (add `"pyarrow"` to `:python_deps`); without it the call answers
  `:import_error`, and a result that is no table `:not_encodable`. With
  `Snakeport.stream/4` each item is one table.

  The bytes are exactly what Explorer reads and writes, so moving a frame between pandas and
  Explorer is one call each way (Explorer is not a dependency of Snakeport):

      {:ok, %Snakeport.Arrow{data: ipc}} =
        Snakeport.call("pandas", "read_csv", ["sales.csv"], result: :arrow)

      df = Explorer.DataFrame.load_ipc_stream!(ipc)
      back = %Snakeport.Arrow{data: Explorer.DataFrame.dump_ipc_stream!(df)}
      {:ok, total} = Snakeport.eval("df['amount'].sum()", %{"df" => back})

  Large streams travel after the frame's term, like large arrays: never copied into an
  intermediate binary on either side.

  ## Examples

      iex> Snakeport.Arrow.new(<<255, 255, 255, 255>>)
      %Snakeport.Arrow{data: <<255, 255, 255, 255>>}
  """

  @enforce_keys [:data]
  defstruct [:data]

  @type t :: %__MODULE__{data: binary()}

  @doc """
  Wraps the bytes of an Arrow IPC stream, to pass them to Python as a pandas `DataFrame`.

  Raises `ArgumentError` when `data` is not a binary (the bytes are checked by pyarrow in
  the worker: a binary that is not a stream fails the call with `:bad_request`).
  """
  @spec new(binary()) :: t()
  def new(data) when is_binary(data), do: %__MODULE__{data: data}

  def new(other),
    do:
      raise(
        ArgumentError,
        "expected the bytes of an Arrow IPC stream (a binary), got: #{inspect(other)}"
      )
end
