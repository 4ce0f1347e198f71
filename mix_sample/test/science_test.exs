defmodule MixSample.ScienceTest do
  # The seeds' examples with real scikit-learn and pandas (installed by `mix snakeport.setup`
  # from config :snakeport, python_deps:), through the app's own Snakeport instance.
  use ExUnit.Case, async: false

  alias Snakeport.SessionContext

  test "the seed's DataFrame example: mean is a working object; its value, data" do
    # As in the seed (SnakeBridge's SessionContext guide), with Snakeport's names.
    mean =
      SessionContext.with_session(fn ->
        {:ok, df} = Snakeport.call("pandas", "DataFrame", [[1, 2, 3]])
        {:ok, mean} = Snakeport.method(df, "mean", [])
        mean
      end)

    assert %Snakeport.Ref{type: "pandas.Series"} = mean

    assert {:ok, %Snakeport.Series{name: nil, index: %Snakeport.Index{data: 0..0}} = series} =
             MixSample.dataframe_mean()

    assert Snakeport.Series.to_list(series) == [{0, 2.0}]
  end

  test "a LinearRegression fitted by process A predicts for process B, numbers in one call" do
    %{predictions: predictions, coef: coef, a: a, b: b, session_id: id} =
      MixSample.shared_regression()

    assert predictions == [7.0, 9.0]
    assert coef == {[2.0], 1.0}
    # Only the model is held in Python: the predictions were data, not refs.
    assert MixSample.session_refs(id) == 1
    assert Snakeport.session_info!(id).owners |> Enum.sort() == Enum.sort([a, b])
    MixSample.stop_and_wait(a)
    MixSample.stop_and_wait(b)
    assert {:ok, :released, _ms} = MixSample.wait_released(id)
  end

  test "a DataFrame as an Arrow IPC stream and back (result: :arrow)" do
    assert {:ok, %{bytes: bytes, sum: 5050}} = MixSample.arrow_round_trip()
    assert bytes > 0
  end

  test "a worker imports scikit-learn and pandas before it is ready (:preload in config)" do
    # A fresh instance with the app's config: its first request finds them loaded.
    start_supervised!({Snakeport, name: MixSample.PreloadCheck})
    code = ~s|[m in __import__("sys").modules for m in ("sklearn.linear_model", "pandas")]|
    assert {:ok, [true, true]} = Snakeport.eval(code, %{}, instance: MixSample.PreloadCheck)
  end
end
