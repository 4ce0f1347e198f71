defmodule Snakeport.SecurityTest do
  # Issue 13, item 7: the :allow start option, through real workers.
  use Snakeport.Case, async: true

  alias Snakeport.Options

  @moduletag snakeport: [
               allow: ["math", "json.loads", "snakeport_harness_testmod.imported", :"os.path"]
             ]

  test "allowed names are called; any other name is refused before it is imported" do
    assert {:ok, 2.0} = Snakeport.call("math", "sqrt", [4.0], instance: @instance)
    assert {:ok, [1]} = Snakeport.call("json", "loads", ["[1]"], instance: @instance)
    assert {:ok, "a/b"} = Snakeport.call("os.path", "join", ["a", "b"], instance: @instance)

    imported? = fn module ->
      Snakeport.call!("snakeport_harness_testmod", "imported", [module], instance: @instance)
    end

    assert imported?.("snakeport_harness_canary") == false

    assert {:error, %Error{reason: :not_allowed, message: message}} =
             Snakeport.call("snakeport_harness_canary", "hello", [], instance: @instance)

    assert message ==
             "snakeport_harness_canary.hello is not allowed: the worker's allow-list " <>
               "(--allow) does not name it"

    assert {:error, %Error{reason: :not_allowed}} =
             Snakeport.get_attr("snakeport_harness_canary", "hello", instance: @instance)

    assert imported?.("snakeport_harness_canary") == false

    for {module, function} <- [
          {"os", "system"},
          {"builtins", "eval"},
          {"json", "dumps"},
          {"math", "sqrt.__self__"},
          {"os.path", "os.system"}
        ] do
      assert {:error, %Error{reason: :not_allowed}} =
               Snakeport.call(module, function, ["true"], instance: @instance)
    end
  end

  test "eval is refused: it runs any source" do
    assert {:error, %Error{reason: :not_allowed, message: "eval is not allowed" <> _}} =
             Snakeport.eval("1 + 1", %{}, instance: @instance)
  end

  @tag snakeport: false
  test ":allow is validated and passed to the worker as one --allow" do
    config = fn allow -> Options.validate!(python: python(), allow: allow) end
    assert config.(nil).allow == nil
    refute "--allow" in Options.worker_flags(config.(nil))
    assert config.([:math, "json.loads"]).allow == ["math", "json.loads"]
    assert ["--allow", "math,json.loads"] = allow_flag(config.([:math, "json.loads"]))
    assert ["--allow", ""] = allow_flag(config.([]))

    for bad <- ["math", ["_thread"], ["os._exit"], ["a..b"], ["1x"], [nil], [1], ["a,b"]] do
      assert_raise ArgumentError,
                   "expected :allow to be nil or a list of dotted Python names whose parts " <>
                     "do not start with _ (\"math\", \"json.loads\"), got: #{inspect(bad)}",
                   fn -> config.(bad) end
    end
  end

  @tag snakeport: [allow: []]
  test "an empty allow-list allows no name; control requests still work" do
    assert {:error, %Error{reason: :not_allowed}} =
             Snakeport.call("math", "sqrt", [4.0], instance: @instance)

    assert {:ok, %{}} = Snakeport.stats(instance: @instance)
  end

  defp allow_flag(config),
    do: config |> Options.worker_flags() |> Enum.drop_while(&(&1 != "--allow")) |> Enum.take(2)
end
