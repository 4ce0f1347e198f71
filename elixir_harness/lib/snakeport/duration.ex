defmodule Snakeport.Duration do
  @moduledoc """
  A Python `datetime.timedelta` (or `numpy.timedelta64`, `pandas.Timedelta`) as a count of
  microseconds, exactly; passed to Python it is a `timedelta` again.

  ## Examples

      iex> Snakeport.Duration.new(1500, :millisecond)
      %Snakeport.Duration{microseconds: 1_500_000}

      iex> Snakeport.Duration.to(%Snakeport.Duration{microseconds: 90_000_000}, :second)
      90
  """

  @enforce_keys [:microseconds]
  defstruct [:microseconds]

  @type t :: %__MODULE__{microseconds: integer()}

  @doc "A duration of `amount` `unit`s (`:second`, `:millisecond`, `:microsecond`)."
  @spec new(integer(), :second | :millisecond | :microsecond) :: t()
  def new(amount, unit \\ :microsecond) when is_integer(amount),
    do: %__MODULE__{microseconds: System.convert_time_unit(amount, unit, :microsecond)}

  @doc "The duration in `unit`s, rounded down (`System.convert_time_unit/3`)."
  @spec to(t(), System.time_unit()) :: integer()
  def to(%__MODULE__{microseconds: us}, unit),
    do: System.convert_time_unit(us, :microsecond, unit)
end
