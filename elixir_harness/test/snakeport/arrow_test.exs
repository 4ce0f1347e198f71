defmodule Snakeport.ArrowTest do
  # Arrow IPC streams both ways through the real worker, with real pandas and pyarrow:
  # `result: :arrow` gives %Snakeport.Arrow{}, which Python reads back as a pandas DataFrame
  # (science_helpers.same/2 compares it with pandas' own equality).
  use Snakeport.Case, async: true

  alias Snakeport.Arrow

  @h "science_helpers"
  # Every IPC stream message starts with the continuation marker 0xFFFFFFFF.
  @marker <<255, 255, 255, 255>>

  defp py(source, opts),
    do: Snakeport.call(@h, "eval_", [source], Keyword.merge([instance: @instance], opts))

  defp same?(value, source), do: Snakeport.call!(@h, "same", [value, source], instance: @instance)

  test "a DataFrame comes back as an IPC stream and goes back as the same DataFrame" do
    source =
      "pd.DataFrame({'a': [1, 2, 3], 'b': [0.5, None, 2.5], 'c': ['x', None, 'z']}, index=[7, 8, 9])"

    assert {:ok, %Arrow{data: @marker <> _} = arrow} = py(source, result: :arrow)
    assert same?(arrow, source) == true
  end

  test "a large stream travels as a blob both ways and is the same table" do
    source =
      "pd.DataFrame({'v': np.arange(200_000, dtype='float64'), 'w': np.arange(200_000) % 7})"

    assert {:ok, %Arrow{data: data} = arrow} = py(source, result: :arrow)
    assert byte_size(data) > 1_000_000
    # A sub-binary of the reply frame (the blob), not a copy.
    assert :binary.referenced_byte_size(data) > byte_size(data)
    assert same?(arrow, source) == true
  end

  test "Series, pyarrow tables and dicts of columns are tables too" do
    for source <- [
          "pd.Series([1.5, 2.5], name='s')",
          "__import__('pyarrow').table({'x': [1, 2]})",
          "{'k': [True, False]}"
        ] do
      assert {:ok, %Arrow{data: @marker <> _}} = py(source, result: :arrow), source
    end

    {:ok, arrow} = py("pd.Series([1.5, 2.5], name='s')", result: :arrow)
    assert same?(arrow, "pd.DataFrame({'s': [1.5, 2.5]})") == true
  end

  test "what is not a table is :not_encodable, naming its type; the worker goes on" do
    assert {:error, %Error{reason: :not_encodable, details: %{type: "builtins.object"}}} =
             py("object()", result: :arrow)

    assert {:error, %Error{reason: :not_encodable}} = py("42", result: :arrow)
    assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
  end

  test "bytes that are not an IPC stream are a :bad_request" do
    assert {:error, %Error{reason: :bad_request, message: message}} =
             Snakeport.call(@h, "describe", [Arrow.new("not arrow")], instance: @instance)

    assert message =~ "Arrow"

    assert_raise ArgumentError, ~r/expected the bytes of an Arrow IPC stream/, fn ->
      Arrow.new(5)
    end
  end

  test "a stream of DataFrame chunks gives one %Snakeport.Arrow{} per chunk" do
    chunks =
      Snakeport.stream(@h, "eval_", ["(pd.DataFrame({'chunk': [i, i]}) for i in range(5))"],
        result: :arrow,
        batch_size: 2,
        instance: @instance
      )
      |> Enum.to_list()

    assert length(chunks) == 5

    for {arrow, i} <- Enum.with_index(chunks) do
      assert %Arrow{} = arrow
      assert same?(arrow, "pd.DataFrame({'chunk': [#{i}, #{i}]})") == true
    end
  end
end
