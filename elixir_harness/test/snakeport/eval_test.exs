defmodule Snakeport.EvalTest do
  # Snakeport.eval/3 against the real worker, with real scikit-learn and numpy.
  use Snakeport.Case, async: true

  @mod "snakeport_harness_testmod"

  test "the value of the last expression, with bindings as variables" do
    assert {:ok, 42} = Snakeport.eval("x * y", %{"x" => 6, "y" => 7}, instance: @instance)
    assert {:ok, 2.0} = Snakeport.eval("import math\nmath.sqrt(n)", [n: 4], instance: @instance)

    assert {:ok, [0, 1, 4]} =
             Snakeport.eval("[i * i for i in range(k)]", %{k: 3}, instance: @instance)

    # No final expression: nil. Bindings are optional.
    assert {:ok, nil} = Snakeport.eval("y = 1", %{}, instance: @instance)
    assert 6 = Snakeport.eval!("sum(xs)", %{"xs" => [1, 2, 3]}, instance: @instance)
  end

  test "each eval starts from a fresh namespace" do
    assert {:ok, nil} = Snakeport.eval("leak = 1", %{}, instance: @instance)

    assert {:error, %Error{reason: :python_error, python_type: "builtins.NameError"}} =
             Snakeport.eval("leak", %{}, instance: @instance)
  end

  test "refs resolve to their objects; the result is marshalled as usual" do
    {:ok, box} = Snakeport.call(@mod, "Box", [5], instance: @instance)
    assert {:ok, 6} = Snakeport.eval("b.get() + 1", %{"b" => box}, instance: @instance)
    # A result that is not data is a ref of the same session (the refs' session).
    assert {:ok, %Ref{type: "snakeport_harness_testmod.Box"} = added} =
             Snakeport.eval("b.add(10)", %{"b" => box}, instance: @instance)

    assert added.session_id == box.session_id
    assert {:ok, 15} = Snakeport.method(added, "get", [], instance: @instance)
  end

  test "model.predict(X).tolist(): one round trip, no intermediate ref left behind" do
    {:ok, model} =
      Snakeport.call("sklearn.linear_model", "LinearRegression", [], instance: @instance)

    {:ok, _} =
      Snakeport.method(model, "fit", [[[1.0], [2.0], [3.0]], [2.0, 4.0, 6.0]], instance: @instance)

    {:ok, %{refs: refs}} = Snakeport.session_info(model.session_id, instance: @instance)

    {:ok, %{requests: before}} = Snakeport.stats(instance: @instance)

    assert {:ok, [predicted]} =
             Snakeport.eval("model.predict(X).tolist()", %{"model" => model, "X" => [[4.0]]},
               instance: @instance
             )

    {:ok, %{requests: after_eval}} = Snakeport.stats(instance: @instance)
    assert_in_delta predicted, 8.0, 1.0e-9
    # One request for the eval (plus the stats request that counted it).
    assert after_eval - before == 2
    # The ndarray that predict returned was never stored as a ref.
    assert {:ok, %{refs: ^refs}} = Snakeport.session_info(model.session_id, instance: @instance)
  end

  test "a loop of predictions keeps the session's ref count flat" do
    {:ok, model} =
      Snakeport.call("sklearn.linear_model", "LinearRegression", [], instance: @instance)

    {:ok, _} = Snakeport.method(model, "fit", [[[0.0], [1.0]], [0.0, 1.0]], instance: @instance)

    for i <- 1..50 do
      assert {:ok, [_]} =
               Snakeport.eval("m.predict(X).tolist()", %{"m" => model, "X" => [[i * 1.0]]},
                 instance: @instance
               )
    end

    assert {:ok, %{refs: 1}} = Snakeport.session_info(model.session_id, instance: @instance)
  end

  test "result: :ref and :value apply" do
    assert {:ok, %Ref{type: "builtins.list"}} =
             Snakeport.eval("[1, 2]", %{}, result: :ref, instance: @instance)

    assert {:error, %Error{reason: :not_encodable}} =
             Snakeport.eval("object()", %{}, result: :value, instance: @instance)
  end

  test "errors: syntax, exceptions with the eval's traceback, bad bindings" do
    assert {:error, %Error{reason: :python_error, python_type: "builtins.SyntaxError"}} =
             Snakeport.eval("1 +", %{}, instance: @instance)

    assert {:error, %Error{python_type: "builtins.ZeroDivisionError", traceback: tb}} =
             Snakeport.eval("a = 1\na / 0", %{}, instance: @instance)

    assert Enum.any?(tb, &(&1 =~ "<snakeport eval>"))

    assert {:error, %Error{reason: :bad_request, message: message}} =
             Snakeport.eval("1", %{"not a name" => 1}, instance: @instance)

    assert message =~ "Python variable names"

    assert {:error, %Error{reason: :bad_request}} =
             Snakeport.eval("1", %{"class" => 1}, instance: @instance)

    assert_raise ArgumentError, ~r/expected :bindings to be a map/, fn ->
      Snakeport.eval("1", [1, 2], instance: @instance)
    end

    assert_raise ArgumentError, ~r/expected :code to be Python source/, fn ->
      Snakeport.eval(:code, %{}, instance: @instance)
    end
  end

  test "the worker compiles each distinct source once" do
    code = "v + #{System.unique_integer([:positive])}"

    info = fn ->
      Snakeport.eval!("import snakeport._eval as e\ne.cache_info()[:2]", %{}, instance: @instance)
    end

    {hits, misses} = info.()
    for v <- 1..5, do: {:ok, _} = Snakeport.eval(code, %{"v" => v}, instance: @instance)
    {hits2, misses2} = info.()
    # The new source was compiled once (the info source itself is a hit each time).
    assert misses2 - misses == 1
    assert hits2 - hits == 4 + 1
  end

  test "eval runs in the caller's session and may call Elixir tools" do
    SessionContext.with_session([instance: @instance], fn ->
      ctx = SessionContext.current(@instance)

      assert {:ok, session_id} =
               Snakeport.eval("import snakeport\nsnakeport.context().session_id", %{},
                 instance: @instance
               )

      assert session_id == ctx.session_id

      code = """
      import snakeport
      ctx = snakeport.context()
      ctx.call_elixir_tool("set_session_state", key="k", value=v)
      ctx.call_elixir_tool("get_session_state", key="k")
      """

      assert {:ok, [1, 2]} = Snakeport.eval(code, %{"v" => [1, 2]}, instance: @instance)
    end)
  end
end
