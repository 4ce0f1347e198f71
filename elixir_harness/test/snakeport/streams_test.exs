defmodule Snakeport.StreamsTest do
  # Python generators and iterators as lazy Elixir streams (Snakeport.stream/4,
  # stream_method/4, to_stream/2), against the real worker: batches pulled on demand, the
  # generator closed (its finally run) and released however the stream ends.
  use Snakeport.Case, async: true

  @mod "snakeport_harness_testmod"

  defp events(tag) do
    {:ok, all} = Snakeport.call(@mod, "events", [], instance: @instance)
    for [^tag | what] <- all, do: what
  end

  defp yielded(tag), do: Enum.count(events(tag), &match?(["yield", _], &1))

  test "a generator's items, in batches, with its finally run at the end" do
    stream = Snakeport.stream(@mod, "counting", [25, "all"], batch_size: 10, instance: @instance)
    assert events("all") == []
    assert Enum.to_list(stream) == Enum.to_list(0..24)
    assert ["exhausted"] in events("all") and ["finally"] in events("all")
    assert python_refs(@instance) == 0
  end

  test "items are pulled only as the consumer demands them" do
    stream =
      Snakeport.stream(@mod, "counting", [1_000, "lazy"], batch_size: 4, instance: @instance)

    assert Enum.take(stream, 5) == [0, 1, 2, 3, 4]
    # Two batches of 4: the generator never ran further.
    assert yielded("lazy") == 8
    # Halting closed the generator (its finally ran) and released it, before take returned.
    assert List.last(events("lazy")) == ["finally"]
    refute ["exhausted"] in events("lazy")
    assert python_refs(@instance) == 0
  end

  test "a small stream is one round trip: no ref is kept" do
    assert Snakeport.stream("builtins", "range", [3], instance: @instance) |> Enum.to_list() ==
             [0, 1, 2]

    assert python_refs(@instance) == 0
  end

  test "an exception in the consumer closes and releases the generator" do
    stream =
      Snakeport.stream(@mod, "counting", [100, "raise"], batch_size: 5, instance: @instance)

    assert_raise RuntimeError, "consumer failed", fn ->
      Enum.each(stream, fn
        7 -> raise "consumer failed"
        _ -> :ok
      end)
    end

    assert List.last(events("raise")) == ["finally"]
    assert python_refs(@instance) == 0
  end

  test "the consumer's death closes the generator, also in a session that lives on" do
    # The session is owned by this process too: only the stream's guard can close it.
    sid = "stream-shared-#{System.unique_integer([:positive])}"
    {:ok, 3} = Snakeport.call("operator", "add", [1, 2], session: sid, instance: @instance)
    parent = self()

    consumer =
      spawn(fn ->
        Snakeport.stream(@mod, "counting", [100, "killed"],
          batch_size: 5,
          session: sid,
          instance: @instance
        )
        |> Enum.each(fn i ->
          if i == 2, do: send(parent, :consuming)
          if i == 2, do: Process.sleep(:infinity)
        end)
      end)

    assert_receive :consuming, 5_000
    assert python_refs(@instance) == 1
    Process.exit(consumer, :kill)
    eventually(fn -> List.last(events("killed")) == ["finally"] end)
    eventually(fn -> python_refs(@instance) == 0 end)
    refute released?(sid, @instance)
  end

  test "the session's release closes a generator in the middle of its stream" do
    ctx = SessionContext.create(instance: @instance)
    stream = Snakeport.stream(@mod, "counting", [100, "sess"], batch_size: 5, session: ctx)
    # Suspend the stream after its first item: its generator waits in the session.
    {:suspended, [0], continuation} =
      Enumerable.reduce(stream, {:cont, []}, fn x, acc -> {:suspend, [x | acc]} end)

    assert {:ok, 1} = Snakeport.release_session(ctx)
    assert List.last(events("sess")) == ["finally"]
    # Halting the stream afterwards is fine (the iterator is gone already).
    assert {:halted, [0]} = continuation.({:halt, [0]})
  end

  test "the items before an exception of the iterator come first, then the error" do
    stream = Snakeport.stream(@mod, "failing_after", [5], batch_size: 100, instance: @instance)
    me = self()

    error =
      assert_raise Error, fn -> stream |> Stream.each(&send(me, {:item, &1})) |> Stream.run() end

    assert %Error{reason: :python_error, python_type: "builtins.ValueError"} = error
    assert error.message =~ "failed after 5"
    for i <- 0..4, do: assert_received({:item, ^i})
    assert python_refs(@instance) == 0
  end

  test "a call that fails, or a result that is not iterable, raises at once" do
    assert_raise Error, ~r/TypeError/, fn ->
      Snakeport.stream("operator", "add", [1, 2], instance: @instance) |> Enum.to_list()
    end

    assert_raise Error, fn ->
      Snakeport.stream("no_such_module_xyz", "f", [], instance: @instance) |> Enum.to_list()
    end
  end

  test "items that are not data are refs of the session" do
    boxes = Snakeport.stream(@mod, "boxes_of", [3], batch_size: 2, instance: @instance)
    assert [%Ref{} = a, %Ref{}, %Ref{} = c] = Enum.to_list(boxes)
    assert {:ok, 0} = Snakeport.method(a, "get", [])
    assert {:ok, 2} = Snakeport.method(c, "get", [])
    assert python_refs(@instance) == 3

    assert_raise Error, ~r/not_encodable|cannot travel/, fn ->
      Snakeport.stream(@mod, "boxes_of", [3], result: :value, instance: @instance)
      |> Enum.to_list()
    end
  end

  test "stream_method/4 and to_stream/2" do
    {:ok, rows} = Snakeport.call(@mod, "Rows", [3], instance: @instance)

    assert [%{"name" => "r-0"}, %{"name" => "r-1"}, %{"name" => "r-2", "i" => 2}] =
             rows |> Snakeport.stream_method("rows", ["r"], batch_size: 2) |> Enum.to_list()

    # An iterable's own ref stays; the iterator made from it is released.
    assert rows |> Snakeport.to_stream(batch_size: 2) |> Enum.to_list() == [0, 1, 2]
    assert {:ok, 3} = Snakeport.get_attr(rows, "n")

    # A generator returned by a call: the stream takes it over (released when done).
    {:ok, gen} = Snakeport.call(@mod, "counting", [10, "ref"], instance: @instance)
    assert gen |> Snakeport.to_stream(batch_size: 3) |> Enum.take(4) == [0, 1, 2, 3]
    assert List.last(events("ref")) == ["finally"]
    assert {:error, %Error{reason: :ref_released}} = Snakeport.method(gen, "__next__", [])
  end

  test "byte budget: large items end a batch early" do
    # 3 items of 400 KiB in a 1 MiB budget: batches of at most 3 items.
    {:ok, _} = Snakeport.call(@mod, "events", [], instance: @instance)

    stream =
      Snakeport.stream("builtins", "iter", [List.duplicate(String.duplicate("x", 400_000), 7)],
        batch_bytes: 1_000_000,
        instance: @instance
      )

    assert length(Enum.to_list(stream)) == 7
  end

  test "invalid options are refused when the stream is built" do
    assert_raise ArgumentError, ~r/expected :batch_size to be a positive integer/, fn ->
      Snakeport.stream("builtins", "range", [3], batch_size: 0)
    end

    assert_raise ArgumentError, ~r/unknown keys \[:bogus\]/, fn ->
      Snakeport.stream("builtins", "range", [3], bogus: 1)
    end
  end
end
