defmodule Bench.Science do
  @moduledoc """
  numpy arrays through Snakeport's public API: an 8 MiB float64 array Elixir -> Python ->
  Elixir (as `%Snakeport.Array{}`, and the same values as lists: the `.tolist()` path), and
  `predict` of a fitted scikit-learn `LinearRegression` on 1,000 rows, with arrays and with
  lists. The measuring functions return batches (see `Bench.Stats`).
  """

  alias Bench.Stats
  alias Snakeport.Array

  @mib8 8 * 1_048_576
  @features 8
  @rows 1_000

  @doc "The 8 MiB float64 array and the same values as a list of floats."
  def data do
    list = for i <- 1..div(@mib8, 8), do: i * 0.5
    {Array.from_list(list, {:f, 64}), list}
  end

  @doc "Round trips of `array` through `bench_helpers.identity` (MiB counted one way)."
  def array_echo(%Array{data: data} = array, n) do
    size = byte_size(data)

    Stats.repeat(n, size / 1_048_576, fn ->
      {:ok, %Array{data: back}} = Snakeport.call("bench_helpers", "identity", [array])
      ^size = byte_size(back)
    end)
  end

  @doc """
  Round trips of the same values the way they went before arrays were data (the `.tolist()`
  path): the list in, `numpy.asarray(list)` kept as a ref, `ref.tolist()` out, the ref
  released.
  """
  def list_echo(list, n) do
    count = length(list)

    Stats.repeat(n, count * 8 / 1_048_576, fn ->
      {:ok, ref} = Snakeport.call("numpy", "asarray", [list], result: :ref)
      {:ok, back} = Snakeport.method(ref, "tolist", [])
      :ok = Snakeport.release_ref(ref)
      ^count = length(back)
    end)
  end

  @doc "A fitted LinearRegression (a ref) and the 1,000 rows to predict, as an array and as lists."
  def predict_setup do
    {:ok, model} = Snakeport.call("bench_helpers", "fitted_regression", [@features])
    rows = for r <- 1..@rows, do: for(f <- 1..@features, do: rem(r * f, 97) / 97)
    {model, Array.from_list(rows, {:f, 64}), rows}
  end

  @doc "`model.predict(x)` with an array in and an array out."
  def predict_arrays(model, %Array{} = x, n) do
    Stats.repeat(n, 1, fn ->
      {:ok, %Array{shape: {@rows}}} = Snakeport.method(model, "predict", [x])
    end)
  end

  @doc "`model.predict(rows).tolist()` with lists in and out."
  def predict_lists(model, rows, n) do
    Stats.repeat(n, 1, fn ->
      {:ok, [_ | _]} = Snakeport.call("bench_helpers", "predict_list", [model, rows])
    end)
  end
end
