defmodule Snakeport.Extension do
  @moduledoc """
  A value of a type of your own: `name` says what it is, `payload` carries its data.

  Python code sends one with `snakeport.Extension(name, payload)` (typically returned by an
  encoder registered with `snakeport.register_encoder`). A `%Snakeport.Extension{}` passed
  to Python is given to the decoder registered for its name with
  `snakeport.register_decoder` (a call holding one whose name has no decoder fails with
  `:bad_request`). Return one from a `Snakeport.Encoder` implementation to send your
  structs that way.

  ## Examples

      iex> %Snakeport.Extension{name: "polars.DataFrame", payload: <<1, 2>>}.name
      "polars.DataFrame"
  """

  @enforce_keys [:name, :payload]
  defstruct [:name, :payload]

  @type t :: %__MODULE__{name: String.t(), payload: term()}
end
