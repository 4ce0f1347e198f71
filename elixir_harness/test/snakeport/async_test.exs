defmodule Snakeport.AsyncTest do
  # `async def`: awaitable results run on the worker's one asyncio event loop, against the
  # real worker. Many awaits proceed at once in one worker (threads: 1), timeouts and
  # cancels cancel the task, and a coroutine blocking the loop does not block the worker.
  use Snakeport.Case, async: true

  @mod "snakeport_harness_testmod"

  defp events(tag) do
    {:ok, all} = Snakeport.call(@mod, "events", [], instance: @instance)
    for [^tag | what] <- all, do: what
  end

  test "a coroutine's result is its awaited value; asyncio is imported only then" do
    assert {:ok, false} = Snakeport.call(@mod, "asyncio_imported", [], instance: @instance)
    assert {:ok, 5} = Snakeport.call("asyncio", "sleep", [0.01, 5], instance: @instance)
    assert {:ok, true} = Snakeport.call(@mod, "asyncio_imported", [], instance: @instance)
    assert {:ok, "v"} = Snakeport.call(@mod, "nap", [0.01, "v"], instance: @instance)
  end

  test "a method returning a coroutine, a result that is an object" do
    {:ok, client} = Snakeport.call(@mod, "Client", [], instance: @instance)
    assert {:ok, %{"key" => "k"}} = Snakeport.method(client, "fetch", ["k"])

    assert {:ok, %Ref{type: "asyncio.locks.Event"}} =
             Snakeport.call("asyncio", "Event", [], instance: @instance)
  end

  test "an exception of the coroutine is the call's error" do
    assert {:error, %Error{reason: :python_error, python_type: "builtins.ValueError"} = error} =
             Snakeport.call(@mod, "async_fail", ["boom"], instance: @instance)

    assert error.message =~ "boom"
  end

  test "1,000 awaiting calls at once in one worker with one thread" do
    ctx = SessionContext.create(instance: @instance)
    {:ok, 3} = Snakeport.call("operator", "add", [1, 2], session: ctx)

    # A barrier that opens only when all 1,000 coroutines wait on it at the same time.
    results =
      1..1_000
      |> Task.async_stream(
        fn _ -> Snakeport.call(@mod, "barrier", ["b", 1_000], session: ctx, timeout: 60_000) end,
        max_concurrency: 1_000,
        timeout: 70_000
      )
      |> Enum.map(fn {:ok, result} -> result end)

    assert Enum.all?(results, &match?({:ok, n} when n >= 1_000, &1))

    # 1,000 sleeps of 0.1 s take about one sleep, not 100 s.
    started = System.monotonic_time(:millisecond)

    1..1_000
    |> Task.async_stream(fn _ -> Snakeport.call(@mod, "nap", [0.1, 1], session: ctx) end,
      max_concurrency: 1_000,
      timeout: 60_000
    )
    |> Enum.each(fn {:ok, result} -> assert result == {:ok, 1} end)

    assert System.monotonic_time(:millisecond) - started < 20_000
    assert {:ok, peak} = Snakeport.call(@mod, "nap_peak", [], session: ctx)
    assert peak > 1
    assert %{threads: 1} = hd(Snakeport.stats!(instance: @instance).workers)
  end

  test "a timeout cancels the task: CancelledError inside, its finally runs" do
    assert {:error, %Error{reason: :timeout}} =
             Snakeport.call(@mod, "guarded", ["t", 30], timeout: 300, instance: @instance)

    eventually(fn -> events("t") == [["start"], ["cancelled"], ["finally"]] end)
    eventually(fn -> Snakeport.stats!(instance: @instance).in_flight == 0 end)
  end

  test "a coroutine blocking the loop does not block control requests or other calls" do
    task = Task.async(fn -> Snakeport.call(@mod, "async_block", [5], instance: @instance) end)

    # Wait until it runs: then stats and a plain call answer while it still blocks the loop.
    eventually(fn -> Snakeport.stats!(instance: @instance).in_flight == 1 end)
    assert {:ok, %{in_flight: 1}} = Snakeport.stats(instance: @instance)
    assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
    assert Task.yield(task, 0) == nil
    assert {:ok, "blocked"} = Task.await(task, 10_000)
  end

  test "snakeport.context() and Elixir tools inside a coroutine" do
    :ok = Snakeport.register_tool(:double, fn %{"x" => x} -> 2 * x end, instance: @instance)

    assert {:ok, 42} =
             Snakeport.call(@mod, "async_tool", ["double"], kwargs: [x: 21], instance: @instance)
  end
end
