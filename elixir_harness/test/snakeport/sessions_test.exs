defmodule Snakeport.SessionsTest do
  use Snakeport.Case, async: true

  import ExUnit.CaptureLog

  @mod "snakeport_harness_testmod"

  defp shared_id, do: "shared-#{System.unique_integer([:positive])}"

  defp box_in(session_id, value \\ 1) do
    SessionContext.with_session([instance: @instance, session_id: session_id], fn ->
      Snakeport.call!(@mod, "Box", [value], instance: @instance)
    end)
  end

  describe "owners" do
    test "an auto-session's Python objects are released when its process dies" do
      {pid, ref} = start_owner(fn -> Snakeport.call!(@mod, "Box", [1], instance: @instance) end)
      assert %Ref{} = ref

      assert {:ok, %{refs: 1, owners: [^pid], auto: true}} =
               Snakeport.session_info(ref.session_id, instance: @instance)

      assert python_refs(@instance) == 1

      stop(pid)
      eventually(fn -> python_refs(@instance) == 0 end)
      assert released?(ref.session_id, @instance)
      assert harness_sessions(@instance) == 0
    end

    test "a shared session stays alive until its LAST owner dies" do
      session_id = shared_id()
      {a, ref} = start_owner(fn -> box_in(session_id) end)

      use_ref = fn ->
        SessionContext.with_session([instance: @instance, session_id: session_id], fn ->
          Snakeport.method(ref, "get")
        end)
      end

      {b, {:ok, 1}} = start_owner(use_ref)
      {:ok, info} = Snakeport.session_info(session_id, instance: @instance)
      assert Enum.sort(info.owners) == Enum.sort([a, b])
      assert info.refs == 1

      # A dies: B still owns the session, the object is still there and usable.
      stop(a)

      eventually(fn ->
        match?({:ok, %{owners: [^b]}}, Snakeport.session_info(session_id, instance: @instance))
      end)

      assert {:ok, 1} = run_in(b, use_ref)
      assert {:ok, %{refs: 1}} = Snakeport.session_info(session_id, instance: @instance)

      # B dies too: the session is released in Python (the harness forgets it first, then
      # its worker's courier sends the release).
      stop(b)
      eventually(fn -> released?(session_id, @instance) end)
      eventually(fn -> python_refs(@instance) == 0 end)
    end

    test "using a ref without a context adopts the ref's session" do
      {a, ref} = start_owner(fn -> Snakeport.call!(@mod, "Box", [5], instance: @instance) end)
      # This process has no context: the ref's session (A's auto-session) is adopted.
      assert {:ok, 5} = Snakeport.method(ref, "get")
      stop(a)
      # This process still owns it, so it lives on.
      assert {:ok, 5} = Snakeport.method(ref, "get")

      assert {:ok, %{owners: [owner]}} =
               Snakeport.session_info(ref.session_id, instance: @instance)

      assert owner == self()
    end

    test "isolation: a ref of one session is rejected in another" do
      {owner, ref} = start_owner(fn -> box_in(shared_id()) end)

      assert {:error, %Error{reason: :session_mismatch, message: message}} =
               SessionContext.with_session([instance: @instance, session_id: shared_id()], fn ->
                 Snakeport.method(ref, "get")
               end)

      assert message =~ ref.session_id

      # A ref passed as an argument is rejected by the worker as well.
      assert {:error, %Error{reason: :session_mismatch}} =
               SessionContext.with_session([instance: @instance], fn ->
                 Snakeport.call(@mod, "echo", [ref], instance: @instance)
               end)

      assert {:error, %Error{reason: :session_mismatch}} =
               Snakeport.call(@mod, "echo", [ref], session: shared_id(), instance: @instance)

      stop(owner)
    end

    test "with_session/1 generates an id, restores the previous context, current/put/clear" do
      assert SessionContext.current(@instance) == nil

      outer =
        SessionContext.create(
          instance: @instance,
          session_id: "outer-#{System.unique_integer([:positive])}"
        )

      assert nil == SessionContext.put_current(outer)

      inner_id =
        SessionContext.with_session([instance: @instance], fn ->
          ctx = SessionContext.current(@instance)
          assert ctx.session_id != outer.session_id
          {:ok, ref} = Snakeport.call(@mod, "Box", [1], instance: @instance)
          assert ref.session_id == ctx.session_id
          ctx.session_id
        end)

      assert SessionContext.current(@instance) == outer
      {:ok, ref} = Snakeport.call(@mod, "Box", [1], instance: @instance)
      assert ref.session_id == outer.session_id
      assert SessionContext.clear_current(@instance) == outer
      assert SessionContext.current(@instance) == nil
      assert {:ok, %{owners: [me]}} = Snakeport.session_info(inner_id, instance: @instance)
      assert me == self()
    end

    test "session options reach the worker: max_refs is enforced per session, tags kept" do
      capture_events([[:snakeport, :worker, :warning]], @instance)

      SessionContext.with_session([instance: @instance, max_refs: 5, tags: %{user: "u1"}], fn ->
        sid = SessionContext.current(@instance).session_id
        for i <- 1..5, do: {:ok, %Ref{}} = Snakeport.call(@mod, "Box", [i], instance: @instance)

        # The worker warns at 80% of max_refs; the event reaches telemetry.
        assert_received {:event, [:snakeport, :worker, :warning], _,
                         %{session: ^sid, refs: 4, max_refs: 5, message: _, worker: 0}}

        assert {:error, %Error{reason: :max_refs_exceeded, details: %{limit: 5}}} =
                 Snakeport.call(@mod, "Box", [6], instance: @instance)

        ctx = SessionContext.current(@instance)

        assert {:ok, %{refs: 5, max_refs: 5, tags: %{user: "u1"}, python: py}} =
                 Snakeport.session_info(ctx, instance: @instance)

        assert py.max_refs == 5 and py.tags == %{user: "u1"}
      end)

      # Other sessions are not affected.
      assert {:ok, %Ref{}} = Snakeport.call(@mod, "Box", [4], instance: @instance)
    end
  end

  describe "release" do
    test "release_session releases the objects in Python at once; its refs then fail" do
      {session_id, r1, r2} =
        SessionContext.with_session([instance: @instance], fn ->
          r1 = Snakeport.call!(@mod, "Box", [1], instance: @instance)
          r2 = Snakeport.call!(@mod, "Box", [2], instance: @instance)
          {r1.session_id, r1, r2}
        end)

      assert {:ok, %{refs: 2}} = Snakeport.session_info(session_id, instance: @instance)
      assert {:ok, 2} = Snakeport.release_session(session_id, instance: @instance)
      assert released?(session_id, @instance)
      assert python_refs(@instance) == 0

      for ref <- [r1, r2] do
        assert {:error, %Error{reason: :ref_released}} = Snakeport.method(ref, "get")
      end

      # Idempotent.
      assert {:ok, 0} = Snakeport.release_session(session_id, instance: @instance)
      assert 0 = Snakeport.release_session!(session_id, instance: @instance)
    end

    test "a caller killed during release_session still gets the session released in Python" do
      session_id = shared_id()
      {owner, _ref} = start_owner(fn -> box_in(session_id) end)
      assert python_refs(@instance) == 1

      # The handler runs in the session store while it handles the release: the caller
      # dies right after the harness forgot the session, before it could say more.
      test_pid = self()

      caller =
        spawn(fn ->
          receive do
            :go ->
              send(
                test_pid,
                {:result, Snakeport.release_session(session_id, instance: @instance)}
              )
          end
        end)

      id = {:kill_caller, make_ref()}

      :ok =
        Snakeport.Telemetry.attach(id, [:snakeport, :session, :pruned], fn _, _, meta, _ ->
          if meta.instance == @instance and meta.reason == :explicit,
            do: Process.exit(caller, :kill)
        end)

      on_exit(fn -> Snakeport.Telemetry.detach(id) end)
      send(caller, :go)
      eventually(fn -> not Process.alive?(caller) end)
      refute_received {:result, _}
      assert released?(session_id, @instance)
      eventually(fn -> python_refs(@instance) == 0 end)
      stop(owner)
    end

    test "after an explicit release, the id can be used again: a new empty session" do
      session_id = shared_id()
      ref = box_in(session_id)
      assert {:ok, 1} = Snakeport.release_session(session_id, instance: @instance)

      SessionContext.with_session([instance: @instance, session_id: session_id], fn ->
        assert {:error, %Error{reason: reason}} = Snakeport.method(ref, "get")
        assert reason in [:ref_released, :ref_not_found]
        assert {:ok, %Ref{}} = Snakeport.call(@mod, "Box", [1], instance: @instance)
      end)

      assert {:ok, %{refs: 1}} = Snakeport.session_info(session_id, instance: @instance)
    end
  end

  describe "sessions in the worker (the worker serves only sessions it was told to open)" do
    test "a call that crosses release_session fails with :session_not_found, creates nothing" do
      session_id = shared_id()
      box_in(session_id)
      {:ok, info, false} = Snakeport.Sessions.lookup(inst(@instance), session_id)
      assert {:ok, 1} = Snakeport.release_session(session_id, instance: @instance)

      # The request a caller had already sent when the release overtook it.
      crossing = Snakeport.Protocol.call("operator", "add", [1, 2], %{}, %{})

      assert {:error,
              %Error{
                reason: :session_not_found,
                details: %{session: ^session_id, cause: :session_released}
              }} = Snakeport.Client.worker_request(info.worker, crossing, session_id, 5_000)

      assert {:ok, %{sessions: 0, python_sessions: 0, refs: 0}} =
               Snakeport.stats(instance: @instance)
    end

    test "a session the worker lost is surfaced as an error, then opened again" do
      session_id = shared_id()
      ref = box_in(session_id, 7)
      {:ok, info, false} = Snakeport.Sessions.lookup(inst(@instance), session_id)

      # Release it in the worker behind the harness's back (as a release_session of an id
      # the harness did not know, sent to every worker, would): the harness row is still there.
      release = Snakeport.Protocol.release_session()

      assert {:ok, %{released: 1}} =
               Snakeport.Client.worker_request(info.worker, release, session_id, 5_000)

      SessionContext.with_session([instance: @instance, session_id: session_id], fn ->
        assert {:error, %Error{reason: :session_not_found, details: %{session: ^session_id}}} =
                 Snakeport.call(@mod, "Box", [1], instance: @instance)

        # The harness opened it again in the worker: a new, empty session.
        assert {:ok, %{python: %{session: ^session_id, refs: 0}}} =
                 Snakeport.session_info(session_id, instance: @instance)

        assert {:ok, %Ref{}} = Snakeport.call(@mod, "Box", [2], instance: @instance)

        assert {:error, %Error{reason: :ref_released, details: %{cause: :session_released}}} =
                 Snakeport.method(ref, "get")
      end)

      assert {:ok, %{sessions: 1, python_sessions: 1, refs: 1}} =
               Snakeport.stats(instance: @instance)
    end

    # A stress check of the ordering: the session store sends open_session before the new
    # session becomes visible to other processes, so none of their calls can reach the
    # worker first (the race window is narrow: this is a regression guard, not a proof).
    @tag snakeport: [threads: 4]
    test "processes that start using a new shared session at once never beat its open_session" do
      for _ <- 1..40 do
        session_id = shared_id()
        go = make_ref()

        tasks =
          for i <- 1..4 do
            Task.async(fn ->
              receive do
                ^go -> :ok
              end

              SessionContext.with_session([instance: @instance, session_id: session_id], fn ->
                Snakeport.call("operator", "add", [i, 1], instance: @instance)
              end)
            end)
          end

        Enum.each(tasks, &send(&1.pid, go))
        results = Enum.map(tasks, &Task.await/1)
        assert results == [{:ok, 2}, {:ok, 3}, {:ok, 4}, {:ok, 5}]
      end
    end
  end

  describe "opening is acknowledged" do
    # Before, the harness sent open_session without waiting for its answer: a refusal was
    # dropped, the session stayed in the harness, and every call then failed with
    # :session_not_found.
    test "a session the worker refuses to open: its caller gets the error, nothing is left" do
      capture_events(
        [[:snakeport, :session, :open_failed], [:snakeport, :session, :created]],
        @instance
      )

      sid = shared_id()
      # Tags the worker cannot decode ($snakeport_bytes wants a binary).
      bad = [instance: @instance, session_id: sid, tags: %{x: {:"$snakeport_bytes", 1}}]

      assert {:error, %Error{reason: :bad_request, message: message}} =
               SessionContext.with_session(bad, fn ->
                 Snakeport.call("operator", "add", [1, 2], instance: @instance)
               end)

      assert message =~ "did not open session #{inspect(sid)}"
      assert message =~ "$snakeport_bytes"

      assert_received {:event, [:snakeport, :session, :open_failed], _,
                       %{session_id: ^sid, reopen: false, error: %Error{reason: :bad_request}}}

      refute_received {:event, [:snakeport, :session, :created], _, %{session_id: ^sid}}

      # No half-open session, in the harness or in Python.
      assert released?(sid, @instance)

      assert {:ok, %{sessions: 0, python_sessions: 0}} = Snakeport.stats(instance: @instance)

      # The same id with tags the worker accepts is an ordinary session.
      good = [instance: @instance, session_id: sid, tags: %{x: 1}]

      assert {:ok, 3} =
               SessionContext.with_session(good, fn ->
                 Snakeport.call("operator", "add", [1, 2], instance: @instance)
               end)

      assert {:ok, %{tags: %{x: 1}, python: %{tags: %{x: 1}}}} =
               Snakeport.session_info(sid, instance: @instance)
    end

    @tag snakeport: [session_store: [default_max_refs: 3, default_ttl: 120]]
    test "a session without limits gets the instance's defaults, applied by the worker" do
      {:ok, ref} = Snakeport.call(@mod, "Box", [1], instance: @instance)

      assert {:ok, %{max_refs: 3, ttl_seconds: 120, tags: nil, python: py}} =
               Snakeport.session_info(ref.session_id, instance: @instance)

      assert %{max_refs: 3, ttl_seconds: 120} = py

      for i <- 2..3, do: {:ok, %Ref{}} = Snakeport.call(@mod, "Box", [i], instance: @instance)

      assert {:error, %Error{reason: :max_refs_exceeded, details: %{limit: 3}}} =
               Snakeport.call(@mod, "Box", [4], instance: @instance)

      # A context that states one limit keeps the instance's default for the other.
      SessionContext.with_session([instance: @instance, max_refs: 5], fn ->
        ctx = SessionContext.current(@instance)

        assert {:ok, %{max_refs: 5, ttl_seconds: 120, python: %{max_refs: 5, ttl_seconds: 120}}} =
                 Snakeport.session_info(ctx)
      end)
    end

    # The harness sends only the limits a caller chose, and records what the worker
    # acknowledged: here the worker's own flag (last on its command line) wins.
    @tag snakeport: [
           session_store: [default_ttl: 120],
           worker_args: ["--default-ttl-seconds", "7"]
         ]
    test "the harness records the limits the worker acknowledged" do
      {:ok, ref} = Snakeport.call(@mod, "Box", [1], instance: @instance)

      assert {:ok, %{ttl_seconds: 7, python: %{ttl_seconds: 7}}} =
               Snakeport.session_info(ref.session_id, instance: @instance)
    end
  end

  describe "no reply of the worker is thrown away unseen" do
    # Before, the harness sent release_session without waiting for its answer, and dropped
    # the replies nobody waited for without a trace.
    test "the count of refs a worker released with a session becomes a :closed event" do
      capture_events([[:snakeport, :session, :closed]], @instance)
      sid = shared_id()

      {owner, _refs} =
        start_owner(fn ->
          SessionContext.with_session([instance: @instance, session_id: sid], fn ->
            for i <- 1..3, do: Snakeport.call!(@mod, "Box", [i], instance: @instance)
          end)
        end)

      stop(owner)

      assert_receive {:event, [:snakeport, :session, :closed], %{refs: 3},
                      %{session_id: ^sid, worker: 0, reason: :owner_down}},
                     5_000

      {:ok, ref} = Snakeport.call(@mod, "Box", [1], instance: @instance)
      assert {:ok, 1} = Snakeport.release_session(ref.session_id, instance: @instance)
      auto = ref.session_id

      assert_receive {:event, [:snakeport, :session, :closed], %{refs: 1},
                      %{session_id: ^auto, reason: :explicit}}
    end

    test "replies that nobody waits for any more become :reply_dropped events" do
      capture_events([[:snakeport, :worker, :reply_dropped]], @instance)

      assert {:error, %Error{reason: :timeout}} =
               Snakeport.call(@mod, "spin", [30], timeout: 100, instance: @instance)

      # The answer to the cancel the caller sent, and the cancelled call's own late reply.
      assert_receive {:event, [:snakeport, :worker, :reply_dropped], %{},
                      %{outcome: :ok, error: nil, worker: 0, request_id: _}},
                     5_000

      assert_receive {:event, [:snakeport, :worker, :reply_dropped], %{},
                      %{outcome: :error, error: %Error{reason: :cancelled}}},
                     5_000
    end
  end

  describe "TTL" do
    @tag snakeport: [session_store: [cleanup_interval: 50]]
    test "a session unused for its TTL is released in Python" do
      capture_events([[:snakeport, :session, :pruned]], @instance)
      session_id = shared_id()

      {owner, ref} =
        start_owner(fn ->
          SessionContext.with_session(
            [instance: @instance, session_id: session_id, ttl_seconds: 1],
            fn ->
              Snakeport.call!(@mod, "Box", [1], instance: @instance)
            end
          )
        end)

      assert {:ok, %{refs: 1}} = Snakeport.session_info(session_id, instance: @instance)
      # The owner is alive, but the session is idle: the sweep releases it.
      assert_receive {:event, [:snakeport, :session, :pruned], %{count: 1},
                      %{reason: :ttl, session_ids: [^session_id]}},
                     5_000

      assert released?(session_id, @instance)
      eventually(fn -> python_refs(@instance) == 0 end)

      assert {:error, %Error{reason: :ref_released}} =
               run_in(owner, fn -> Snakeport.method(ref, "get") end)

      stop(owner)
    end

    @tag snakeport: [session_store: [cleanup_interval: 50, default_ttl: 1]]
    test "auto-sessions use the store's default_ttl, and a used session is kept" do
      {:ok, ref} = Snakeport.call(@mod, "Box", [1], instance: @instance)
      deadline = System.monotonic_time(:millisecond) + 1_500

      # Keep using it past its TTL: it stays.
      Stream.repeatedly(fn -> Snakeport.method(ref, "get") end)
      |> Enum.take_while(fn result ->
        assert {:ok, 1} = result

        receive do
        after
          100 -> System.monotonic_time(:millisecond) < deadline
        end
      end)

      assert {:ok, %{ttl_seconds: 1, refs: 1}} =
               Snakeport.session_info(ref.session_id, instance: @instance)

      # Stop using it: it goes.
      eventually(fn -> released?(ref.session_id, @instance) end, 5_000)
      eventually(fn -> python_refs(@instance) == 0 end)
    end
  end

  describe "the session store's answer is part of the call" do
    test "a call whose session must be adopted times out with its own timeout when the store is stuck" do
      :ok = :sys.suspend(store(@instance))

      try do
        # A new process has no session yet: its call has to ask the (suspended) store.
        task =
          Task.async(fn ->
            Snakeport.call("operator", "add", [1, 2], timeout: 100, instance: @instance)
          end)

        assert {:error, %Error{reason: :timeout, details: %{timeout: 100}} = error} =
                 Task.await(task, 5_000)

        assert error.message =~ "session store"
      after
        :ok = :sys.resume(store(@instance))
      end

      # The store answers again; the late adoption of the dead task's session is undone.
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
      eventually(fn -> harness_sessions(@instance) == 1 end)
    end
  end

  describe "quota" do
    @tag snakeport: [session_store: [max_sessions: 2]]
    test "beyond max_sessions a new session is refused with :session_quota_exceeded" do
      capture_events([[:snakeport, :session, :accumulation_warning]], @instance)
      {:ok, _} = Snakeport.call(@mod, "Box", [1], instance: @instance)

      {owner, {:ok, _}} =
        start_owner(fn -> Snakeport.call(@mod, "Box", [1], instance: @instance) end)

      assert {:error, %Error{reason: :session_quota_exceeded, details: %{max_sessions: 2}}} =
               SessionContext.with_session([instance: @instance], fn ->
                 Snakeport.call(@mod, "Box", [1], instance: @instance)
               end)

      assert_receive {:event, _, %{current_sessions: 2, max_sessions: 2, utilization: 100.0},
                      %{reason: :quota_exceeded, strict_mode: false}}

      # Existing sessions keep working; when one goes, there is room again.
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
      stop(owner)
      eventually(fn -> harness_sessions(@instance) == 1 end)

      assert {:ok, %Ref{}} =
               SessionContext.with_session([instance: @instance], fn ->
                 Snakeport.call(@mod, "Box", [1], instance: @instance)
               end)
    end

    @tag snakeport: [session_store: [max_sessions: 4, strict_mode: true]]
    test "strict mode logs loud warnings above 80% of the quota" do
      capture_events([[:snakeport, :session, :accumulation_warning]], @instance)

      log =
        capture_log(fn ->
          for _ <- 1..3,
              do:
                SessionContext.with_session([instance: @instance], fn ->
                  Snakeport.call!("operator", "add", [1, 2], instance: @instance)
                end)

          refute_received {:event, _, _, _}

          SessionContext.with_session([instance: @instance], fn ->
            Snakeport.call!("operator", "add", [1, 2], instance: @instance)
          end)

          assert_receive {:event, _, %{current_sessions: 4, max_sessions: 4, utilization: 100.0},
                          %{reason: :threshold_warning, strict_mode: true}}

          assert {:error, %Error{reason: :session_quota_exceeded}} =
                   SessionContext.with_session([instance: @instance], fn ->
                     Snakeport.call("operator", "add", [1, 2], instance: @instance)
                   end)
        end)

      assert log =~ "[warning]"
      assert log =~ "session accumulation: 4 of 4 sessions"
      assert log =~ "cannot create session"
    end
  end

  describe "ownership after re-creation" do
    test "a session released and created again by another process is adopted again" do
      sid = "recreated-#{System.unique_integer([:positive])}"
      me = self()

      assert {:ok, 3} =
               Snakeport.call("operator", "add", [1, 2], session: sid, instance: @instance)

      assert {:ok, %{owners: [^me]}} = Snakeport.session_info(sid, instance: @instance)
      assert {:ok, _} = Snakeport.release_session(sid, instance: @instance)

      other =
        spawn(fn ->
          {:ok, 3} = Snakeport.call("operator", "add", [1, 2], session: sid, instance: @instance)
          send(me, :created)
          receive do: (:stop -> :ok)
        end)

      assert_receive :created, 5_000
      assert {:ok, %{owners: [^other]}} = Snakeport.session_info(sid, instance: @instance)

      assert {:ok, 3} =
               Snakeport.call("operator", "add", [1, 2], session: sid, instance: @instance)

      assert {:ok, %{owners: owners}} = Snakeport.session_info(sid, instance: @instance)
      assert Enum.sort(owners) == Enum.sort([me, other])
      send(other, :stop)
      {:ok, _} = Snakeport.release_session(sid, instance: @instance)
    end
  end

  describe "events" do
    test "session, call and worker events reach attached handlers" do
      capture_events(
        [
          [:snakeport, :session, :created],
          [:snakeport, :session, :released],
          [:snakeport, :session, :pruned],
          [:snakeport, :call, :start],
          [:snakeport, :call, :stop],
          [:snakeport, :call, :exception]
        ],
        @instance
      )

      {pid, ref} = start_owner(fn -> Snakeport.call!(@mod, "Box", [1], instance: @instance) end)
      sid = ref.session_id

      assert_receive {:event, [:snakeport, :session, :created], %{current_sessions: 1},
                      %{session_id: ^sid, worker: 0, auto: true}}

      assert_receive {:event, [:snakeport, :call, :start], %{system_time: _},
                      %{op: :call, module: @mod, function: "Box", session_id: ^sid}}

      assert_receive {:event, [:snakeport, :call, :stop], %{duration: d}, %{session_id: ^sid}}
      assert is_integer(d) and d > 0

      {:error, _} =
        run_in(pid, fn -> Snakeport.call(@mod, "fail", ["x"], instance: @instance) end)

      assert_receive {:event, [:snakeport, :call, :exception], %{duration: _},
                      %{kind: :error, reason: %Error{python_type: "builtins.ValueError"}}}

      stop(pid)

      assert_receive {:event, [:snakeport, :session, :released], %{remaining_sessions: 0},
                      %{session_id: ^sid, reason: :owner_down}}

      assert_receive {:event, [:snakeport, :session, :pruned], %{count: 1, remaining_sessions: 0},
                      %{reason: :owner_down, session_ids: [^sid]}}

      {:ok, ref} = Snakeport.call(@mod, "Box", [1], instance: @instance)
      {:ok, _} = Snakeport.release_session(ref.session_id, instance: @instance)

      assert_receive {:event, [:snakeport, :session, :pruned], %{count: 1},
                      %{reason: :explicit, session_ids: [_]}}
    end

    @tag snakeport: [session_store: [cleanup_interval: 50]]
    test "the worker's own events become telemetry (refs pruned by the worker's TTL sweep)" do
      capture_events([[:snakeport, :worker, :refs_pruned]], @instance)

      # The harness sweep releases idle sessions; the worker prunes idle refs on its own.
      # Keep the session busy (plain calls) while its ref stays unused.
      SessionContext.with_session([instance: @instance, ttl_seconds: 1], fn ->
        {:ok, ref} = Snakeport.call(@mod, "Box", [1], instance: @instance)
        sid = ref.session_id

        ids =
          eventually(fn ->
            {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)

            receive do
              {:event, [:snakeport, :worker, :refs_pruned], %{count: 1},
               %{session: ^sid, reason: :ttl, ref_ids: ids, worker: 0}} ->
                ids
            after
              100 -> nil
            end
          end)

        assert ref.id in ids

        assert {:error, %Error{reason: :ref_released, details: %{cause: :ttl}}} =
                 Snakeport.method(ref, "get")

        assert {:ok, %{refs: 0}} = Snakeport.session_info(sid, instance: @instance)
      end)
    end
  end
end
