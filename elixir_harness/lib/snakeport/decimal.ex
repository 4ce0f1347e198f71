defmodule Snakeport.Decimal do
  @moduledoc """
  A Python `decimal.Decimal`, exactly: the value is `sign * coef * 10 ** exp`.

  Fields as in the Elixir `decimal` package: `:sign` (`1` or `-1`; negative zero keeps
  `-1`), `:coef` (a non-negative integer, or `:NaN`, `:sNaN`, `:inf`), `:exp` (an integer).
  With that package, `struct(Decimal, Map.from_struct(d))` is the `%Decimal{}` (it has no
  signalling NaN), and this makes `%Decimal{}` values travel as `decimal.Decimal`:

      defimpl Snakeport.Encoder, for: Decimal do
        def encode(%Decimal{sign: sign, coef: coef, exp: exp}),
          do: %Snakeport.Decimal{sign: sign, coef: coef, exp: exp}
      end

  A `Decimal` NaN with a diagnostic payload (`Decimal("NaN123")`) has no such form and
  travels as a ref.

  ## Examples

      iex> to_string(%Snakeport.Decimal{sign: -1, coef: 150, exp: -2})
      "-1.50"

      iex> to_string(%Snakeport.Decimal{sign: 1, coef: :inf, exp: 0})
      "Infinity"
  """

  @enforce_keys [:sign, :coef, :exp]
  defstruct [:sign, :coef, :exp]

  @type t :: %__MODULE__{
          sign: 1 | -1,
          coef: non_neg_integer() | :NaN | :sNaN | :inf,
          exp: integer()
        }

  defimpl String.Chars do
    def to_string(%{sign: sign, coef: coef, exp: exp}) do
      s = if sign == -1, do: "-", else: ""

      case coef do
        :NaN -> s <> "NaN"
        :sNaN -> s <> "sNaN"
        :inf -> s <> "Infinity"
        n when exp >= 0 -> s <> Integer.to_string(n) <> String.duplicate("0", exp)
        n -> s <> point(Integer.to_string(n), -exp)
      end
    end

    defp point(digits, places) do
      digits = String.pad_leading(digits, places + 1, "0")
      {int, frac} = String.split_at(digits, byte_size(digits) - places)
      int <> "." <> frac
    end
  end
end
