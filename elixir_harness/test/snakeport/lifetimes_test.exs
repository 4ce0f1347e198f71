defmodule Snakeport.LifetimesTest do
  # Regression tests of issue 10's "also found" list: session lifetimes that match
  # long-lived apps. Each failed on the code before the fix.
  use Snakeport.Case, async: true

  @mod "snakeport_harness_testmod"
  # Fast sweeps on both sides, so that TTLs of a second are observable.
  @fast [session_store: [cleanup_interval: 100], worker_args: ["--sweep-interval", "0.1"]]

  describe "a session with a call in flight is in use" do
    @describetag snakeport: @fast

    test "a 3 s fit in a 1 s-TTL session returns its result, and the session and its refs survive" do
      capture_events(
        [[:snakeport, :session, :pruned], [:snakeport, :worker, :refs_pruned]],
        @instance
      )

      SessionContext.with_session([instance: @instance, ttl_seconds: 1], fn ->
        {:ok, model} = Snakeport.call(@mod, "SlowModel", [], instance: @instance)
        x = [[1.0], [2.0], [3.0]]

        # Three TTLs long, many sweeps of both sides meanwhile.
        assert {:ok, %Ref{} = fitted} =
                 Snakeport.method(model, "fit", [x, [2.0, 4.0, 6.0]],
                   kwargs: [seconds: 3],
                   instance: @instance
                 )

        # The model came back as the same ref: it was never pruned, nor its session.
        assert fitted.id == model.id
        refute_received {:event, [:snakeport, :session, :pruned], _, _}
        refute_received {:event, [:snakeport, :worker, :refs_pruned], _, _}

        # The prediction is an ndarray: numbers, in the same call.
        assert {:ok, %Snakeport.Array{} = y} =
                 Snakeport.method(model, "predict", [[[4.0]]], instance: @instance)

        assert [p] = Snakeport.Array.to_list(y)
        assert_in_delta p, 8.0, 1.0e-9
      end)
    end

    test "the TTL clock restarts when the call ends, then the session expires as usual" do
      capture_events(
        [[:snakeport, :session, :pruned], [:snakeport, :session, :closed]],
        @instance
      )

      {:ok, session} =
        Snakeport.SessionStore.create_session("long-call", ttl: 1, instance: @instance)

      {:ok, _box} = Snakeport.call(@mod, "Box", [1], session: session.id, instance: @instance)

      assert {:ok, 2.0} =
               Snakeport.call(@mod, "sleep", [2.0], session: session.id, instance: @instance)

      ended = System.monotonic_time(:millisecond)
      # Still there right after the call, although its last checkout is 2 s old. (Its Box
      # ref may already be gone: the worker's own sweep prunes refs idle for a TTL, and the
      # Box was not touched by the call; only the session's clock restarts.)
      assert {:ok, %{session_id: "long-call"}} =
               Snakeport.session_info(session.id, instance: @instance)

      assert_receive {:event, [:snakeport, :session, :pruned], %{count: 1},
                      %{reason: :ttl, session_ids: ["long-call"]}},
                     5_000

      # Not before a whole TTL after the call's end.
      assert System.monotonic_time(:millisecond) - ended >= 1_000
      # Released in Python too (its ref may have gone first, pruned by the worker's own
      # sweep as idle for the same TTL).
      assert_receive {:event, [:snakeport, :session, :closed], %{refs: _}, %{reason: :ttl}}
      assert python_refs(@instance) == 0
    end
  end

  describe ":overflow is a session option everywhere sessions are created" do
    test "with_session(overflow: :evict_lru)" do
      SessionContext.with_session([instance: @instance, max_refs: 2, overflow: :evict_lru], fn ->
        [first | _] = for i <- 1..3, do: Snakeport.call!(@mod, "Box", [i], instance: @instance)

        assert {:error, %Error{reason: :ref_released, details: %{cause: :evicted}}} =
                 Snakeport.method(first, "get", [], instance: @instance)

        assert {:ok, %{overflow: :evict_lru, refs: 2}} =
                 Snakeport.session_info(SessionContext.current(@instance))
      end)
    end

    test "SessionStore.create_session(overflow: :evict_lru)" do
      {:ok, s} =
        Snakeport.SessionStore.create_session("lru",
          max_refs: 1,
          overflow: :evict_lru,
          instance: @instance
        )

      assert s.overflow == :evict_lru

      for i <- 1..3,
          do: {:ok, %Ref{}} = Snakeport.call(@mod, "Box", [i], session: s.id, instance: @instance)

      assert {:ok, %{refs: 1}} = Snakeport.session_info(s.id, instance: @instance)
    end

    test "a long-lived process calling predict in a loop under evict_lru never fails" do
      SessionContext.with_session([instance: @instance, max_refs: 10, overflow: :evict_lru], fn ->
        {:ok, model} = Snakeport.call(@mod, "SlowModel", [], instance: @instance)

        {:ok, _} =
          Snakeport.method(model, "fit", [[[0.0], [1.0]], [0.0, 1.0]], instance: @instance)

        # result: :ref keeps each prediction in Python (a ref per call, as a value that is
        # not data would be): the oldest ones are evicted.
        for i <- 1..40 do
          assert {:ok, %Ref{}} =
                   Snakeport.method(model, "predict", [[[i * 1.0]]],
                     instance: @instance,
                     result: :ref
                   )
        end

        # The model is used on every call, so it is never the least recently used ref.
        assert {:ok, %Ref{}} =
                 Snakeport.method(model, "predict", [[[0.5]]], instance: @instance, result: :ref)

        assert {:ok, %{refs: 10}} = Snakeport.session_info(SessionContext.current(@instance))
      end)
    end

    @tag snakeport: [session_store: [default_overflow: :evict_lru, default_max_refs: 2]]
    test "session_store: [default_overflow: ...] applies to auto-sessions" do
      for i <- 1..4, do: {:ok, %Ref{}} = Snakeport.call(@mod, "Box", [i], instance: @instance)
      assert python_refs(@instance) == 2
    end
  end

  describe "the configured session_store defaults apply to every kind of session" do
    @describetag snakeport: [session_store: [default_ttl: 2, default_max_refs: 7]]

    test "auto, with_session and SessionStore sessions" do
      {:ok, ref} = Snakeport.call(@mod, "Box", [1], instance: @instance)

      assert {:ok, %{ttl_seconds: 2, max_refs: 7, overflow: :error, kind: :auto}} =
               Snakeport.session_info(ref.session_id, instance: @instance)

      SessionContext.with_session([instance: @instance], fn ->
        assert {:ok, %{ttl_seconds: 2, max_refs: 7, kind: :owned}} =
                 Snakeport.session_info(SessionContext.current(@instance))
      end)

      assert {:ok, %{ttl: 2, max_refs: 7, kind: :store}} =
               Snakeport.SessionStore.create_session("defaults", instance: @instance)
    end
  end

  describe "a later opener's differing limits give a clear error" do
    test "with_session(max_refs: 7) on an existing session raises :session_options_conflict" do
      sid = "conflict-#{System.unique_integer([:positive])}"

      {owner, _} =
        start_owner(fn ->
          SessionContext.with_session([instance: @instance, session_id: sid], fn -> :ok end)
        end)

      error =
        assert_raise Error, fn ->
          SessionContext.with_session([instance: @instance, session_id: sid, max_refs: 7], fn ->
            flunk("must not run")
          end)
        end

      assert error.reason == :session_options_conflict
      assert error.message =~ "max_refs: 10000 (asked: 7)"
      assert error.details.conflicts == %{max_refs: {10_000, 7}}

      # Stating the session's own limits, or none, is fine; the limits did not change.
      SessionContext.with_session([instance: @instance, session_id: sid, max_refs: 10_000], fn ->
        assert {:ok, %{max_refs: 10_000}} = Snakeport.session_info(sid, instance: @instance)
      end)

      stop(owner)
    end

    test "a process that already uses the session gets the error from its calls too" do
      SessionContext.with_session([instance: @instance], fn ->
        ctx = SessionContext.current(@instance)
        assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
        stricter = %{ctx | ttl_seconds: 5, overflow: :evict_lru}

        assert {:error, %Error{reason: :session_options_conflict, details: %{conflicts: c}}} =
                 Snakeport.call("operator", "add", [1, 2], session: stricter)

        assert c == %{ttl_seconds: {3600, 5}, overflow: {:error, :evict_lru}}
      end)
    end

    test "get_or_create_session with other limits" do
      {:ok, _} = Snakeport.SessionStore.create_session("gc", ttl: 60, instance: @instance)

      assert {:ok, %{id: "gc"}} =
               Snakeport.SessionStore.get_or_create_session("gc", ttl: 60, instance: @instance)

      assert {:error, %Error{reason: :session_options_conflict}} =
               Snakeport.SessionStore.get_or_create_session("gc", ttl: 61, instance: @instance)
    end
  end
end
