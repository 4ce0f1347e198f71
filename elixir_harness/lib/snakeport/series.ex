defmodule Snakeport.Series do
  @moduledoc """
  A pandas `Series` as data: its name, its index and its values (`result: :value`; see
  `Snakeport.DataFrame` for the rule and the forms of the values).

  ## Examples

      iex> s = %Snakeport.Series{
      ...>   name: "mean",
      ...>   index: %Snakeport.Index{names: [nil], data: ["a", "b"]},
      ...>   data: Snakeport.Array.from_list([1.5, 2.5], {:f, 64})
      ...> }
      iex> Snakeport.Series.to_list(s)
      [{"a", 1.5}, {"b", 2.5}]
  """

  @enforce_keys [:name, :index, :data]
  defstruct [:name, :index, :data]

  @type t :: %__MODULE__{
          name: term(),
          index: Snakeport.Index.t(),
          data: Snakeport.DataFrame.column()
        }

  @doc "The `{label, value}` pairs of the series, in order."
  @spec to_list(t()) :: [{term(), term()}]
  def to_list(%__MODULE__{index: index, data: data}) do
    Enum.zip(Snakeport.Index.to_list(index), Snakeport.DataFrame.values(data))
  end
end
