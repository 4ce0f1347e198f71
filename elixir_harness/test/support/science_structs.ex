defmodule Snakeport.Test.Point do
  @moduledoc "A user struct with a Snakeport.Encoder implementation (science tests)."
  defstruct [:x, :y]
end

defimpl Snakeport.Encoder, for: Snakeport.Test.Point do
  def encode(%{x: x, y: y}),
    do: %Snakeport.Extension{name: "test.Point", payload: %{"x" => x, "y" => y}}
end

defmodule Snakeport.Test.Plain do
  @moduledoc "A user struct without an implementation: travels as a map (science tests)."
  defstruct [:a]
end

defmodule Snakeport.Test.Loop do
  @moduledoc "A struct whose encoder returns the same kind of struct (science tests)."
  defstruct [:n]
end

defimpl Snakeport.Encoder, for: Snakeport.Test.Loop do
  def encode(%{n: n}), do: %Snakeport.Test.Loop{n: n + 1}
end
