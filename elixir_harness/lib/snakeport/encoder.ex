defprotocol Snakeport.Encoder do
  @moduledoc """
  How your structs travel to Python.

  A struct passed to Python (as an argument, a keyword argument, a `set_attr/4` value, an
  `eval/3` binding or a tool's value, anywhere in a term) is sent as what `encode/1`
  returns, which may hold anything Snakeport sends (maps, lists, arrays, dates, refs, other
  structs...). Structs without an implementation keep the default: they travel as maps,
  their `:__struct__` key included. Snakeport's own structs (`Snakeport.Ref`,
  `Snakeport.Array`, `Date`, `MapSet`, `Range`, ...) are translated before this protocol is
  consulted.

  To make Python build an object of its own type, return a `%Snakeport.Extension{}` and
  register a decoder for its name in Python (`snakeport.register_decoder`):

      defimpl Snakeport.Encoder, for: MyApp.Point do
        def encode(%MyApp.Point{x: x, y: y}),
          do: %Snakeport.Extension{name: "myapp.Point", payload: [x, y]}
      end

  Or return plain data the Python side understands as it is:

      defimpl Snakeport.Encoder, for: MyApp.Money do
        def encode(%MyApp.Money{amount: amount, currency: currency}),
          do: %{"amount" => amount, "currency" => Atom.to_string(currency)}
      end
  """

  @fallback_to_any true

  @doc "The term that travels to Python instead of `struct`."
  @spec encode(t()) :: term()
  def encode(struct)
end

defimpl Snakeport.Encoder, for: Any do
  # No implementation: the struct travels as a map (Snakeport's default).
  def encode(struct), do: struct
end
