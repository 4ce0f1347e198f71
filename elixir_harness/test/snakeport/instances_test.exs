defmodule Snakeport.InstancesTest do
  # Two independent instances in one VM, started with different options, and the default
  # instance of the other test modules possibly running at the same time.
  use Snakeport.Case, async: true

  @moduletag snakeport: false

  @mod "snakeport_harness_testmod"
  @a Module.concat(__MODULE__, A)
  @b Module.concat(__MODULE__, B)

  setup do
    start_supervised!(
      {Snakeport,
       Keyword.merge(base_opts(),
         name: @a,
         pool_size: 1,
         env: [{"SNAKEPORT_TEST_FLAVOR", "a"}],
         call_timeout: 7_000
       )}
    )

    start_supervised!(
      {Snakeport,
       Keyword.merge(base_opts(),
         name: @b,
         pool_size: 2,
         threads: 4,
         env: [{"SNAKEPORT_TEST_FLAVOR", "b"}],
         session_store: [default_max_refs: 2]
       )}
    )

    :ok
  end

  defp flavor(instance),
    do: Snakeport.call("os", "getenv", ["SNAKEPORT_TEST_FLAVOR"], instance: instance)

  test "each instance has its own supervisor, workers and options" do
    assert {:ok, "a"} = flavor(@a)
    assert {:ok, "b"} = flavor(@b)

    assert {:ok, %{instance: @a, pool_size: 1, workers: [%{threads: 1, os_pid: a0}]}} =
             Snakeport.stats(instance: @a)

    assert {:ok, %{instance: @b, pool_size: 2, workers: [%{threads: 4} = b0, b1]}} =
             Snakeport.stats(instance: @b)

    # More than one call thread: no C fast path (stats say so).
    assert %{fast_path: false} = b0

    assert a0 not in [b0.os_pid, b1.os_pid]
    assert Process.whereis(Snakeport.Instance.names(@a).supervisor) != nil
    assert Process.whereis(Snakeport.Instance.names(@b).supervisor) != nil
    assert inst(@a).call_timeout == 7_000 and inst(@b).call_timeout == 10_000

    # B's session default, A's not.
    {:ok, _} = Snakeport.call(@mod, "Box", [1], instance: @b)
    {:ok, _} = Snakeport.call(@mod, "Box", [2], instance: @b)

    assert {:error, %Error{reason: :max_refs_exceeded, details: %{limit: 2}}} =
             Snakeport.call(@mod, "Box", [3], instance: @b)

    for i <- 1..3, do: {:ok, %Ref{}} = Snakeport.call(@mod, "Box", [i], instance: @a)
  end

  test "sessions are per instance: the same id names two sessions; auto-sessions, contexts" do
    sid = "same-#{System.unique_integer([:positive])}"

    box = fn instance, value ->
      SessionContext.with_session([instance: instance, session_id: sid], fn ->
        Snakeport.call!(@mod, "Box", [value], instance: instance)
      end)
    end

    ra = box.(@a, 1)
    rb = box.(@b, 2)
    assert %Ref{instance: @a, session_id: ^sid} = ra
    assert %Ref{instance: @b, session_id: ^sid} = rb

    # Refs know their instance: no option needed.
    assert {:ok, 1} = Snakeport.method(ra, "get")
    assert {:ok, 2} = Snakeport.method(rb, "get")

    # Releasing the session in A leaves B's.
    assert {:ok, 1} = Snakeport.release_session(sid, instance: @a)
    assert {:error, %Error{reason: :ref_released}} = Snakeport.method(ra, "get")
    assert {:ok, 2} = Snakeport.method(rb, "get")
    assert {:ok, %{refs: 1, instance: @b}} = Snakeport.session_info(sid, instance: @b)

    # One auto-session per instance for the same process.
    {:ok, auto_a} = Snakeport.call(@mod, "Box", [1], instance: @a)
    {:ok, auto_b} = Snakeport.call(@mod, "Box", [1], instance: @b)
    assert auto_a.session_id != auto_b.session_id
    assert Snakeport.Sessions.auto_id(@a) == auto_a.session_id
    assert Snakeport.Sessions.auto_id(@b) == auto_b.session_id

    # The current context is per instance: a context of A does not apply to calls to B.
    SessionContext.with_session([instance: @a], fn ->
      ctx = SessionContext.current(@a)
      assert SessionContext.current(@b) == nil
      assert {:ok, %Ref{session_id: in_a}} = Snakeport.call(@mod, "Box", [1], instance: @a)
      assert {:ok, %Ref{session_id: in_b}} = Snakeport.call(@mod, "Box", [1], instance: @b)
      assert in_a == ctx.session_id
      assert in_b == auto_b.session_id

      # A context passed as :session names its instance.
      assert {:ok, %Ref{instance: @a, session_id: ^in_a}} =
               Snakeport.call(@mod, "Box", [1], session: ctx)
    end)
  end

  test "a ref or context of one instance used with another is a clear error" do
    {:ok, ra} = Snakeport.call(@mod, "Box", [1], instance: @a)
    ctx_a = SessionContext.create(instance: @a)

    for result <- [
          Snakeport.method(ra, "get", [], instance: @b),
          Snakeport.get_attr(ra, "value", instance: @b),
          Snakeport.set_attr(ra, "value", 2, instance: @b),
          Snakeport.call("builtins", "len", [[ra]], instance: @b),
          Snakeport.call("builtins", "len", [[1]], session: ctx_a, instance: @b),
          Snakeport.release_ref(ra, instance: @b),
          Snakeport.release_session(ctx_a, instance: @b),
          Snakeport.session_info(ctx_a, instance: @b)
        ] do
      assert {:error, %Error{reason: :instance_mismatch, message: message, details: details}} =
               result

      assert message =~ "instance #{inspect(@a)}"
      assert message =~ "pass instance: #{inspect(@a)}"
      assert details == %{instance: @b, owner_instance: @a}
    end

    # Nothing of that reached B; the ref still works in A.
    assert {:ok, %{sessions: 0}} = Snakeport.stats(instance: @b)
    assert {:ok, 1} = Snakeport.method(ra, "get")
    assert {:ok, 1} = Snakeport.call("builtins", "len", [[ra]], instance: @a)
  end

  test "a worker killed in one instance leaves the other untouched" do
    capture_events([[:snakeport, :worker, :started], [:snakeport, :session, :lost]], @a)
    {owner, {ra, rb}} = start_owner(fn -> {box(@a), box(@b)} end)
    [%{os_pid: victim}] = workers(@a)
    {_, 0} = System.cmd("kill", ["-9", Integer.to_string(victim)])

    assert_receive {:event, [:snakeport, :session, :lost], _, %{instance: @a}}, 5_000
    assert_receive {:event, [:snakeport, :worker, :started], _, %{instance: @a}}, 10_000

    assert {:error, %Error{reason: :session_lost}} =
             run_in(owner, fn -> Snakeport.method(ra, "get") end)

    assert {:ok, 7} = run_in(owner, fn -> Snakeport.method(rb, "get") end)
    assert {:ok, "a"} = flavor(@a)
    stop(owner)
  end

  test "telemetry names the instance" do
    parent = self()
    id = {__MODULE__, make_ref()}

    :ok =
      Snakeport.Telemetry.attach(id, [:snakeport, :session, :created], fn _, _, meta, _ ->
        if meta.instance in [@a, @b], do: send(parent, {:created, meta.instance})
      end)

    on_exit(fn -> Snakeport.Telemetry.detach(id) end)
    {:ok, _} = flavor(@a)
    {:ok, _} = flavor(@b)
    assert_received {:created, @a}
    assert_received {:created, @b}
  end

  test "stopping one instance leaves the other running" do
    :ok = stop_supervised(@a)

    assert {:error, %Error{reason: :not_started, message: message}} = flavor(@a)
    assert message =~ inspect(@a)
    assert {:ok, "b"} = flavor(@b)
  end

  defp box(instance), do: Snakeport.call!(@mod, "Box", [7], instance: instance)
end
