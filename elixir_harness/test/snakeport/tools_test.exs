defmodule Snakeport.ToolsTest do
  # Python calling Elixir: snakeport.context().call_elixir_tool(name, **kwargs) against the
  # real worker, tools registered with the :tools start option and register_tool/3.
  use Snakeport.Case, async: true

  @mod "snakeport_harness_testmod"

  @tools [
    echo: &__MODULE__.echo/1,
    whoami: &__MODULE__.whoami/2,
    fails: &__MODULE__.fails/1,
    raises: &__MODULE__.raises/1,
    sleeps: &__MODULE__.sleeps/1,
    descend: &__MODULE__.descend/2
  ]

  @moduletag snakeport: [tool_timeout: 2_000, tools: @tools]

  def echo(kwargs), do: {:ok, kwargs}
  def whoami(_kwargs, ctx), do: Map.take(ctx, [:instance, :session_id, :request_id, :worker])
  def fails(%{"why" => why}), do: {:error, why}
  def raises(_), do: raise(ArgumentError, "tool went wrong")

  def sleeps(%{"ms" => ms}) do
    Process.sleep(ms)
    :slept
  end

  # Python -> Elixir -> Python -> ... : the tool calls back into the worker, in the session
  # of the call that asked for it (its current context).
  def descend(%{"depth" => depth}, ctx) do
    Snakeport.call!(@mod, "nested", [depth], instance: ctx.instance)
  end

  test "a tool's value comes back to Python; kwargs arrive as a map with string keys" do
    assert {:ok, %{"x" => 1, "y" => "two", "z" => [1.5, nil, true]}} =
             Snakeport.call(@mod, "tool", ["echo"],
               kwargs: [x: 1, y: "two", z: [1.5, nil, true]],
               instance: @instance
             )
  end

  test "an arity-2 tool gets the call's context" do
    {:ok, %{"instance" => _, "session_id" => sid, "request_id" => rid, "worker" => 0}} =
      Snakeport.call(@mod, "tool", ["whoami"], instance: @instance)
      |> then(fn {:ok, m} -> {:ok, Map.new(m, fn {k, v} -> {to_string(k), v} end)} end)

    assert is_integer(rid)
    assert {:ok, ^sid} = Snakeport.call(@mod, "context_session", [], instance: @instance)
  end

  test "objects that are not data travel as refs of the session, both ways" do
    {:ok, box} = Snakeport.call(@mod, "Box", [41], instance: @instance)
    parent = self()

    :ok =
      Snakeport.register_tool(
        :keep,
        fn %{"b" => b} ->
          send(parent, {:tool_got, b})
          b
        end,
        instance: @instance
      )

    # Python passes the object to the tool: the tool gets the session's ref to it (the same
    # ref as ours), returns it, and Python gets its object back.
    code = "import snakeport_harness_testmod as m\nm.tool('keep', b=box).get() + 1"
    assert {:ok, 42} = Snakeport.eval(code, %{"box" => box}, instance: @instance)
    assert_received {:tool_got, %Ref{id: id, session_id: sid}}
    assert {id, sid} == {box.id, box.session_id}
  end

  test "errors come back as snakeport.ToolError with a reason" do
    assert {:ok, ["ToolError", "tool_error", ":nope"]} =
             Snakeport.call(@mod, "tool_error", ["fails"],
               kwargs: [why: :nope],
               instance: @instance
             )

    assert {:ok, ["ToolError", "tool_error", "tool went wrong"]} =
             Snakeport.call(@mod, "tool_error", ["raises"], instance: @instance)

    assert {:ok, ["ToolError", "tool_not_found", message]} =
             Snakeport.call(@mod, "tool_error", ["no_such_tool"], instance: @instance)

    assert message =~ "no Elixir tool \"no_such_tool\"" and message =~ "register_tool"

    # An uncaught ToolError is the call's python_error, with the tool's message.
    assert {:error, %Error{reason: :python_error, python_type: "snakeport.errors.ToolError"} = e} =
             Snakeport.call(@mod, "tool", ["raises"], instance: @instance)

    assert e.message =~ "tool went wrong"
  end

  test "a tool past :tool_timeout is killed and Python gets ToolTimeout" do
    capture_events([[:snakeport, :worker, :reply_dropped]], @instance)

    started = System.monotonic_time(:millisecond)

    assert {:ok, ["ToolTimeout", "timeout", message]} =
             Snakeport.call(@mod, "tool_error", ["sleeps"],
               kwargs: [ms: 60_000],
               instance: @instance
             )

    assert message =~ "2000 ms"
    assert System.monotonic_time(:millisecond) - started < 5_000
    # The worker is free again.
    assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
  end

  test "register_tool/3 and unregister_tool/2; built-in names are reserved" do
    assert :ok =
             Snakeport.register_tool("triple", fn %{"x" => x} -> 3 * x end, instance: @instance)

    assert {:ok, 21} =
             Snakeport.call(@mod, "tool", ["triple"], kwargs: [x: 7], instance: @instance)

    assert :ok = Snakeport.unregister_tool(:triple, instance: @instance)

    assert {:ok, ["ToolError", "tool_not_found", _]} =
             Snakeport.call(@mod, "tool_error", ["triple"], kwargs: [x: 7], instance: @instance)

    assert_raise ArgumentError, ~r/reserved/, fn ->
      Snakeport.register_tool(:get_session_state, fn _ -> 1 end, instance: @instance)
    end

    assert_raise ArgumentError, ~r/arity 1 .* or 2/, fn ->
      Snakeport.register_tool(:bad, fn -> 1 end, instance: @instance)
    end

    assert {:error, %Error{reason: :not_started}} =
             Snakeport.register_tool(:x, fn _ -> 1 end, instance: NoSuchInstance)
  end

  test "session state: set and get from Python, read from Elixir, dropped with the session" do
    sid = "state-#{System.unique_integer([:positive])}"

    SessionContext.with_session([instance: @instance, session_id: sid], fn ->
      assert {:ok, 1} = Snakeport.call(@mod, "counter", [1], instance: @instance)
      assert {:ok, 3} = Snakeport.call(@mod, "counter", [2], instance: @instance)
    end)

    assert {:ok, 3} = Snakeport.SessionStore.get_state(sid, "count", instance: @instance)
    assert :ok = Snakeport.SessionStore.put_state(sid, "count", 10, instance: @instance)
    assert {:ok, 11} = Snakeport.call(@mod, "counter", [1], session: sid, instance: @instance)

    # Another session has its own state.
    assert {:ok, 5} = Snakeport.call(@mod, "counter", [5], instance: @instance)

    {:ok, _} = Snakeport.release_session(sid, instance: @instance)

    assert {:error, :not_found} =
             Snakeport.SessionStore.get_state(sid, "count", instance: @instance)

    assert :ets.select_count(inst(@instance).state, [{{{sid, :_}, :_, :_}, [], [true]}]) == 0

    # A new session with the same id starts with no state.
    assert {:ok, 1} = Snakeport.call(@mod, "counter", [1], session: sid, instance: @instance)
  end

  describe "nested calls (Elixir tool -> Snakeport.call -> Python -> Elixir ...)" do
    @describetag snakeport: [threads: 1, tools: @tools]

    test "do not deadlock a worker with threads: 1" do
      # Each level waits for a tool that calls back into the same worker: with one call
      # running at a time, the waiting call must give its place to the nested one.
      assert {:ok, idents} =
               Snakeport.call(@mod, "nested", [4], instance: @instance, timeout: 10_000)

      assert length(idents) == 5
      assert {:ok, %{in_flight: 0}} = Snakeport.stats(instance: @instance)
    end

    test "run in the session of the outer call" do
      {:ok, box} = Snakeport.call(@mod, "Box", [1], instance: @instance)

      :ok =
        Snakeport.register_tool(
          :use_box,
          fn %{}, _ctx -> Snakeport.method!(box, "get") + 1 end,
          instance: @instance
        )

      assert {:ok, 2} =
               Snakeport.call(@mod, "tool", ["use_box"],
                 session: box.session_id,
                 instance: @instance
               )
    end
  end

  describe "a caller that dies mid-call" do
    @describetag snakeport: [threads: 1, tool_timeout: 60_000, tools: @tools]

    test "kills the tool and cancels the Python call (its wait ends)" do
      parent = self()

      :ok =
        Snakeport.register_tool(
          :block,
          fn _ ->
            send(parent, {:tool_running, self()})
            Process.sleep(:infinity)
          end,
          instance: @instance
        )

      caller =
        spawn(fn ->
          Snakeport.call(@mod, "tool", ["block"], instance: @instance, timeout: 60_000)
        end)

      assert_receive {:tool_running, tool_pid}, 5_000
      tool_ref = Process.monitor(tool_pid)
      assert {:ok, %{in_flight: 1}} = Snakeport.stats(instance: @instance)

      Process.exit(caller, :kill)
      assert_receive {:DOWN, ^tool_ref, :process, ^tool_pid, :killed}, 5_000
      # The Python call was cancelled: the worker runs nothing and takes new calls.
      eventually(fn -> match?({:ok, %{in_flight: 0}}, Snakeport.stats(instance: @instance)) end)
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
    end

    test "a timed-out caller cancels the call: the tool is stopped" do
      parent = self()

      :ok =
        Snakeport.register_tool(
          :block,
          fn _ ->
            send(parent, {:tool_running, self()})
            Process.sleep(:infinity)
          end,
          instance: @instance
        )

      task =
        Task.async(fn ->
          Snakeport.call(@mod, "tool", ["block"], instance: @instance, timeout: 300)
        end)

      assert_receive {:tool_running, tool_pid}, 5_000
      tool_ref = Process.monitor(tool_pid)
      assert {:error, %Error{reason: :timeout}} = Task.await(task)
      # The cancel ended the Python wait, which told the harness to stop the tool.
      assert_receive {:DOWN, ^tool_ref, :process, ^tool_pid, :killed}, 5_000
      eventually(fn -> match?({:ok, %{in_flight: 0}}, Snakeport.stats(instance: @instance)) end)
    end
  end

  test "option validation" do
    assert_raise ArgumentError, ~r/expected the tool "t" to be a function of arity 1/, fn ->
      Snakeport.Options.validate!(tools: [t: :not_a_fun])
    end

    assert_raise ArgumentError, ~r/expected :tool_timeout to be a positive integer/, fn ->
      Snakeport.Options.validate!(tool_timeout: 0)
    end

    assert_raise ArgumentError, ~r/expected :tools to be a keyword list or map/, fn ->
      Snakeport.Options.validate!(tools: :nope)
    end
  end
end
