defmodule Snakeport.Index do
  @moduledoc """
  A pandas `Index` as data (`result: :value`; see `Snakeport.DataFrame`).

  Fields:

    * `:names` - one name per level (`[nil]` for an unnamed flat index).
    * `:data` - the labels: a `Range` for a `RangeIndex`, a `Snakeport.Array` or a list for
      a flat index, a list of tuples for a `MultiIndex`.

  ## Examples

      iex> Snakeport.Index.to_list(%Snakeport.Index{names: [nil], data: 0..4//2})
      [0, 2, 4]
  """

  @enforce_keys [:names, :data]
  defstruct [:names, :data]

  @type t :: %__MODULE__{names: [term()], data: Range.t() | Snakeport.Array.t() | list()}

  @doc "The labels as a list."
  @spec to_list(t()) :: list()
  def to_list(%__MODULE__{data: %Range{} = range}), do: Enum.to_list(range)
  def to_list(%__MODULE__{data: data}), do: Snakeport.DataFrame.values(data)
end
