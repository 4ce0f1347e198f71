defmodule Snakeport.UUID do
  @moduledoc """
  A Python `uuid.UUID`: its canonical text, lowercase (`"8-4-4-4-12"` hex digits); passed
  to Python it is a `uuid.UUID` again. `to_string/1` gives the text.

  ## Examples

      iex> uuid = %Snakeport.UUID{string: "12345678-1234-5678-1234-567812345678"}
      iex> to_string(uuid)
      "12345678-1234-5678-1234-567812345678"
  """

  @enforce_keys [:string]
  defstruct [:string]

  @type t :: %__MODULE__{string: String.t()}

  defimpl String.Chars do
    def to_string(%{string: string}), do: string
  end
end
