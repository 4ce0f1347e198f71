defmodule Snakeport.DataFrame do
  @moduledoc """
  A pandas `DataFrame` as data, column by column.

  The rule: **numpy is data, pandas is a working object unless you ask for its value.** A
  DataFrame that a call returns stays in Python as a `%Snakeport.Ref{}` (you keep working
  on it there) under the default `result: :auto`; pass `result: :value` to get it as a
  `%Snakeport.DataFrame{}`. Passed to Python, a `%Snakeport.DataFrame{}` arrives as a
  `pandas.DataFrame`.

  Fields:

    * `:columns` - the column labels, in order (duplicates kept; a `MultiIndex` gives
      tuples).
    * `:index` - the row index, a `Snakeport.Index`.
    * `:data` - one column per label: a `Snakeport.Array` for numeric, bool, `datetime64`
      and `timedelta64` columns (NaN and NaT stay in the data), else the list of the
      column's values (strings, objects, categoricals, nullable and time-zone aware
      columns), in which every missing value is `nil`.

  ## Examples

      iex> df = %Snakeport.DataFrame{
      ...>   columns: ["a", "b"],
      ...>   index: %Snakeport.Index{names: [nil], data: 0..1},
      ...>   data: [Snakeport.Array.from_list([1, 2], {:s, 64}), ["x", nil]]
      ...> }
      iex> Snakeport.DataFrame.column(df, "b")
      ["x", nil]
      iex> Snakeport.DataFrame.to_columns(df)
      [{"a", [1, 2]}, {"b", ["x", nil]}]
  """

  @enforce_keys [:columns, :index, :data]
  defstruct [:columns, :index, :data]

  @typedoc "A column: an array, or the list of its values."
  @type column :: Snakeport.Array.t() | list()

  @type t :: %__MODULE__{columns: [term()], index: Snakeport.Index.t(), data: [column()]}

  @doc """
  The column labelled `label` (the first one, when labels repeat), or `nil`.
  """
  @spec column(t(), term()) :: column() | nil
  def column(%__MODULE__{columns: columns, data: data}, label) do
    case Enum.find_index(columns, &(&1 == label)) do
      nil -> nil
      i -> Enum.at(data, i)
    end
  end

  @doc """
  The columns as `{label, values}` pairs, in order; arrays become lists
  (`Snakeport.Array.to_list/1`).
  """
  @spec to_columns(t()) :: [{term(), list()}]
  def to_columns(%__MODULE__{columns: columns, data: data}) do
    Enum.zip_with(columns, data, fn label, column -> {label, values(column)} end)
  end

  @doc false
  def values(%Snakeport.Array{} = array), do: Snakeport.Array.to_list(array)
  def values(list) when is_list(list), do: list
end
