defmodule Snakeport.SessionsTest do
  use Snakeport.Case, async: false

  import ExUnit.CaptureLog

  @mod "snakeport_harness_testmod"

  defp shared_id, do: "shared-#{System.unique_integer([:positive])}"

  defp box_in(session_id, value \\ 1) do
    SessionContext.with_session([session_id: session_id], fn ->
      Snakeport.call!(@mod, "Box", [value])
    end)
  end

  describe "owners" do
    test "an auto-session's Python objects are released when its process dies" do
      {pid, ref} = start_owner(fn -> Snakeport.call!(@mod, "Box", [1]) end)
      assert %Ref{} = ref

      assert {:ok, %{refs: 1, owners: [^pid], auto: true}} =
               Snakeport.session_info(ref.session_id)

      assert python_refs() == 1

      stop(pid)
      eventually(fn -> python_refs() == 0 end)
      assert released?(ref.session_id)
      assert harness_sessions() == 0
    end

    test "a shared session stays alive until its LAST owner dies" do
      session_id = shared_id()
      {a, ref} = start_owner(fn -> box_in(session_id) end)

      use_ref = fn ->
        SessionContext.with_session([session_id: session_id], fn ->
          Snakeport.method(ref, "get")
        end)
      end

      {b, {:ok, 1}} = start_owner(use_ref)
      {:ok, info} = Snakeport.session_info(session_id)
      assert Enum.sort(info.owners) == Enum.sort([a, b])
      assert info.refs == 1

      # A dies: B still owns the session, the object is still there and usable.
      stop(a)
      eventually(fn -> match?({:ok, %{owners: [^b]}}, Snakeport.session_info(session_id)) end)
      assert {:ok, 1} = run_in(b, use_ref)
      assert {:ok, %{refs: 1}} = Snakeport.session_info(session_id)

      # B dies too: the session is released in Python.
      stop(b)
      eventually(fn -> released?(session_id) end)
      assert python_refs() == 0
    end

    test "using a ref without a context adopts the ref's session" do
      {a, ref} = start_owner(fn -> Snakeport.call!(@mod, "Box", [5]) end)
      # This process has no context: the ref's session (A's auto-session) is adopted.
      assert {:ok, 5} = Snakeport.method(ref, "get")
      stop(a)
      # This process still owns it, so it lives on.
      assert {:ok, 5} = Snakeport.method(ref, "get")
      assert {:ok, %{owners: [owner]}} = Snakeport.session_info(ref.session_id)
      assert owner == self()
    end

    test "isolation: a ref of one session is rejected in another" do
      {owner, ref} = start_owner(fn -> box_in(shared_id()) end)

      assert {:error, %Error{reason: :session_mismatch, message: message}} =
               SessionContext.with_session([session_id: shared_id()], fn ->
                 Snakeport.method(ref, "get")
               end)

      assert message =~ ref.session_id

      # A ref passed as an argument is rejected by the worker as well.
      assert {:error, %Error{reason: :session_mismatch}} =
               SessionContext.with_session(fn -> Snakeport.call(@mod, "echo", [ref]) end)

      assert {:error, %Error{reason: :session_mismatch}} =
               Snakeport.call(@mod, "echo", [ref], session: shared_id())

      stop(owner)
    end

    test "with_session/1 generates an id, restores the previous context, current/put/clear" do
      assert SessionContext.current() == nil
      outer = SessionContext.create(session_id: "outer-#{System.unique_integer([:positive])}")
      assert nil == SessionContext.put_current(outer)

      inner_id =
        SessionContext.with_session(fn ->
          ctx = SessionContext.current()
          assert ctx.session_id != outer.session_id
          {:ok, ref} = Snakeport.call(@mod, "Box", [1])
          assert ref.session_id == ctx.session_id
          ctx.session_id
        end)

      assert SessionContext.current() == outer
      {:ok, ref} = Snakeport.call(@mod, "Box", [1])
      assert ref.session_id == outer.session_id
      assert SessionContext.clear_current() == outer
      assert SessionContext.current() == nil
      assert {:ok, %{owners: [me]}} = Snakeport.session_info(inner_id)
      assert me == self()
    end

    test "session options reach the worker: max_refs is enforced per session, tags kept" do
      capture_events([[:snakeport, :worker, :warning]])

      SessionContext.with_session([max_refs: 5, tags: %{user: "u1"}], fn ->
        sid = SessionContext.current().session_id
        for i <- 1..5, do: {:ok, %Ref{}} = Snakeport.call(@mod, "Box", [i])

        # The worker warns at 80% of max_refs; the event reaches telemetry.
        assert_received {:event, [:snakeport, :worker, :warning], _,
                         %{session: ^sid, refs: 4, max_refs: 5, message: _, worker: 0}}

        assert {:error, %Error{reason: :max_refs_exceeded, details: %{limit: 5}}} =
                 Snakeport.call(@mod, "Box", [6])

        ctx = SessionContext.current()

        assert {:ok, %{refs: 5, max_refs: 5, tags: %{user: "u1"}, python: py}} =
                 Snakeport.session_info(ctx)

        assert py.max_refs == 5 and py.tags == %{user: "u1"}
      end)

      # Other sessions are not affected.
      assert {:ok, %Ref{}} = Snakeport.call(@mod, "Box", [4])
    end
  end

  describe "release" do
    test "release_session releases the objects in Python at once; its refs then fail" do
      {session_id, r1, r2} =
        SessionContext.with_session(fn ->
          r1 = Snakeport.call!(@mod, "Box", [1])
          r2 = Snakeport.call!(@mod, "Box", [2])
          {r1.session_id, r1, r2}
        end)

      assert {:ok, %{refs: 2}} = Snakeport.session_info(session_id)
      assert {:ok, 2} = Snakeport.release_session(session_id)
      assert released?(session_id)
      assert python_refs() == 0

      for ref <- [r1, r2] do
        assert {:error, %Error{reason: :ref_released}} = Snakeport.method(ref, "get")
      end

      # Idempotent.
      assert {:ok, 0} = Snakeport.release_session(session_id)
      assert 0 = Snakeport.release_session!(session_id)
    end

    test "a caller killed during release_session still gets the session released in Python" do
      session_id = shared_id()
      {owner, _ref} = start_owner(fn -> box_in(session_id) end)
      assert python_refs() == 1

      # The handler runs in the session store while it handles the release: the caller
      # dies right after the harness forgot the session, before it could say more.
      test_pid = self()

      caller =
        spawn(fn ->
          receive do
            :go -> send(test_pid, {:result, Snakeport.release_session(session_id)})
          end
        end)

      id = {:kill_caller, make_ref()}

      :ok =
        Snakeport.Telemetry.attach(id, [:snakeport, :session, :pruned], fn _, _, meta, _ ->
          if meta.reason == :explicit, do: Process.exit(caller, :kill)
        end)

      on_exit(fn -> Snakeport.Telemetry.detach(id) end)
      send(caller, :go)
      eventually(fn -> not Process.alive?(caller) end)
      refute_received {:result, _}
      assert released?(session_id)
      eventually(fn -> python_refs() == 0 end)
      stop(owner)
    end

    test "after an explicit release, the id can be used again: a new empty session" do
      session_id = shared_id()
      ref = box_in(session_id)
      assert {:ok, 1} = Snakeport.release_session(session_id)

      SessionContext.with_session([session_id: session_id], fn ->
        assert {:error, %Error{reason: reason}} = Snakeport.method(ref, "get")
        assert reason in [:ref_released, :ref_not_found]
        assert {:ok, %Ref{}} = Snakeport.call(@mod, "Box", [1])
      end)

      assert {:ok, %{refs: 1}} = Snakeport.session_info(session_id)
    end
  end

  describe "sessions in the worker (the worker serves only sessions it was told to open)" do
    test "a call that crosses release_session fails with :session_not_found, creates nothing" do
      session_id = shared_id()
      box_in(session_id)
      {:ok, info, false} = Snakeport.Sessions.lookup(session_id)
      assert {:ok, 1} = Snakeport.release_session(session_id)

      # The request a caller had already sent when the release overtook it.
      crossing = &{:call, &1, session_id, "operator", "add", [1, 2], %{}, %{}}

      assert {:error,
              %Error{
                reason: :session_not_found,
                details: %{session: ^session_id, cause: :session_released}
              }} = Snakeport.Client.worker_request(info.worker, crossing, 5_000)

      assert {:ok, %{sessions: 0, python_sessions: 0, refs: 0}} = Snakeport.stats()
    end

    test "a session the worker lost is surfaced as an error, then opened again" do
      session_id = shared_id()
      ref = box_in(session_id, 7)
      {:ok, info, false} = Snakeport.Sessions.lookup(session_id)

      # Release it in the worker behind the harness's back (as a late release_session of an
      # older session with the same id would): the harness row is still there.
      release = &{:release_session, &1, session_id}
      assert {:ok, %{released: 1}} = Snakeport.Client.worker_request(info.worker, release, 5_000)

      SessionContext.with_session([session_id: session_id], fn ->
        assert {:error, %Error{reason: :session_not_found, details: %{session: ^session_id}}} =
                 Snakeport.call(@mod, "Box", [1])

        # The harness opened it again in the worker: a new, empty session.
        assert {:ok, %{python: %{session: ^session_id, refs: 0}}} =
                 Snakeport.session_info(session_id)

        assert {:ok, %Ref{}} = Snakeport.call(@mod, "Box", [2])

        assert {:error, %Error{reason: :ref_released, details: %{cause: :session_released}}} =
                 Snakeport.method(ref, "get")
      end)

      assert {:ok, %{sessions: 1, python_sessions: 1, refs: 1}} = Snakeport.stats()
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

              SessionContext.with_session([session_id: session_id], fn ->
                Snakeport.call("operator", "add", [i, 1])
              end)
            end)
          end

        Enum.each(tasks, &send(&1.pid, go))
        results = Enum.map(tasks, &Task.await/1)
        assert results == [{:ok, 2}, {:ok, 3}, {:ok, 4}, {:ok, 5}]
      end
    end
  end

  describe "TTL" do
    @tag snakeport: [session_store: [cleanup_interval: 50]]
    test "a session unused for its TTL is released in Python" do
      capture_events([[:snakeport, :session, :pruned]])
      session_id = shared_id()

      {owner, ref} =
        start_owner(fn ->
          SessionContext.with_session([session_id: session_id, ttl_seconds: 1], fn ->
            Snakeport.call!(@mod, "Box", [1])
          end)
        end)

      assert {:ok, %{refs: 1}} = Snakeport.session_info(session_id)
      # The owner is alive, but the session is idle: the sweep releases it.
      assert_receive {:event, [:snakeport, :session, :pruned], %{count: 1},
                      %{reason: :ttl, session_ids: [^session_id]}},
                     5_000

      assert released?(session_id)
      eventually(fn -> python_refs() == 0 end)

      assert {:error, %Error{reason: :ref_released}} =
               run_in(owner, fn -> Snakeport.method(ref, "get") end)

      stop(owner)
    end

    @tag snakeport: [session_store: [cleanup_interval: 50, default_ttl: 1]]
    test "auto-sessions use the store's default_ttl, and a used session is kept" do
      {:ok, ref} = Snakeport.call(@mod, "Box", [1])
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

      assert {:ok, %{ttl_seconds: 1, refs: 1}} = Snakeport.session_info(ref.session_id)

      # Stop using it: it goes.
      eventually(fn -> released?(ref.session_id) end, 5_000)
      eventually(fn -> python_refs() == 0 end)
    end
  end

  describe "the session store's answer is part of the call" do
    test "a call whose session must be adopted times out with its own timeout when the store is stuck" do
      :ok = :sys.suspend(Snakeport.Sessions)

      try do
        # A new process has no session yet: its call has to ask the (suspended) store.
        task = Task.async(fn -> Snakeport.call("operator", "add", [1, 2], timeout: 100) end)

        assert {:error, %Error{reason: :timeout, details: %{timeout: 100}} = error} =
                 Task.await(task, 5_000)

        assert error.message =~ "session store"
      after
        :ok = :sys.resume(Snakeport.Sessions)
      end

      # The store answers again; the late adoption of the dead task's session is undone.
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2])
      eventually(fn -> harness_sessions() == 1 end)
    end
  end

  describe "quota" do
    @tag snakeport: [session_store: [max_sessions: 2]]
    test "beyond max_sessions a new session is refused with :session_quota_exceeded" do
      capture_events([[:snakeport, :session, :accumulation_warning]])
      {:ok, _} = Snakeport.call(@mod, "Box", [1])
      {owner, {:ok, _}} = start_owner(fn -> Snakeport.call(@mod, "Box", [1]) end)

      assert {:error, %Error{reason: :session_quota_exceeded, details: %{max_sessions: 2}}} =
               SessionContext.with_session(fn -> Snakeport.call(@mod, "Box", [1]) end)

      assert_receive {:event, _, %{current_sessions: 2, max_sessions: 2, utilization: 100.0},
                      %{reason: :quota_exceeded, strict_mode: false}}

      # Existing sessions keep working; when one goes, there is room again.
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2])
      stop(owner)
      eventually(fn -> harness_sessions() == 1 end)

      assert {:ok, %Ref{}} =
               SessionContext.with_session(fn -> Snakeport.call(@mod, "Box", [1]) end)
    end

    @tag snakeport: [session_store: [max_sessions: 4, strict_mode: true]]
    test "strict mode logs loud warnings above 80% of the quota" do
      capture_events([[:snakeport, :session, :accumulation_warning]])

      log =
        capture_log(fn ->
          for _ <- 1..3,
              do:
                SessionContext.with_session(fn -> Snakeport.call!("operator", "add", [1, 2]) end)

          refute_received {:event, _, _, _}
          SessionContext.with_session(fn -> Snakeport.call!("operator", "add", [1, 2]) end)

          assert_receive {:event, _, %{current_sessions: 4, max_sessions: 4, utilization: 100.0},
                          %{reason: :threshold_warning, strict_mode: true}}

          assert {:error, %Error{reason: :session_quota_exceeded}} =
                   SessionContext.with_session(fn -> Snakeport.call("operator", "add", [1, 2]) end)
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
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], session: sid)
      assert {:ok, %{owners: [^me]}} = Snakeport.session_info(sid)
      assert {:ok, _} = Snakeport.release_session(sid)

      other =
        spawn(fn ->
          {:ok, 3} = Snakeport.call("operator", "add", [1, 2], session: sid)
          send(me, :created)
          receive do: (:stop -> :ok)
        end)

      assert_receive :created, 5_000
      assert {:ok, %{owners: [^other]}} = Snakeport.session_info(sid)
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], session: sid)
      assert {:ok, %{owners: owners}} = Snakeport.session_info(sid)
      assert Enum.sort(owners) == Enum.sort([me, other])
      send(other, :stop)
      {:ok, _} = Snakeport.release_session(sid)
    end
  end

  describe "events" do
    test "a call event handler attached to one event only gets it; detached, nothing" do
      me = self()
      handler = fn event, m, meta, _ -> send(me, {:only_stop, event, m, meta}) end
      :ok = Snakeport.Telemetry.attach("only-stop", [:snakeport, :call, :stop], handler)
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2])
      assert_receive {:only_stop, [:snakeport, :call, :stop], %{duration: d}, %{op: :call}}
      assert is_integer(d)
      :ok = Snakeport.Telemetry.detach("only-stop")
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2])
      refute_received {:only_stop, _, _, _}
      refute Snakeport.Telemetry.listening?([:snakeport, :call])
    end

    test "session, call and worker events reach attached handlers" do
      capture_events([
        [:snakeport, :session, :created],
        [:snakeport, :session, :released],
        [:snakeport, :session, :pruned],
        [:snakeport, :call, :start],
        [:snakeport, :call, :stop],
        [:snakeport, :call, :exception]
      ])

      {pid, ref} = start_owner(fn -> Snakeport.call!(@mod, "Box", [1]) end)
      sid = ref.session_id

      assert_receive {:event, [:snakeport, :session, :created], %{current_sessions: 1},
                      %{session_id: ^sid, worker: 0, auto: true}}

      assert_receive {:event, [:snakeport, :call, :start], %{system_time: _},
                      %{op: :call, module: @mod, function: "Box", session_id: ^sid}}

      assert_receive {:event, [:snakeport, :call, :stop], %{duration: d}, %{session_id: ^sid}}
      assert is_integer(d) and d > 0

      {:error, _} = run_in(pid, fn -> Snakeport.call(@mod, "fail", ["x"]) end)

      assert_receive {:event, [:snakeport, :call, :exception], %{duration: _},
                      %{kind: :error, reason: %Error{python_type: "builtins.ValueError"}}}

      stop(pid)

      assert_receive {:event, [:snakeport, :session, :released], %{remaining_sessions: 0},
                      %{session_id: ^sid, reason: :owner_down}}

      assert_receive {:event, [:snakeport, :session, :pruned], %{count: 1, remaining_sessions: 0},
                      %{reason: :owner_down, session_ids: [^sid]}}

      {:ok, ref} = Snakeport.call(@mod, "Box", [1])
      {:ok, _} = Snakeport.release_session(ref.session_id)

      assert_receive {:event, [:snakeport, :session, :pruned], %{count: 1},
                      %{reason: :explicit, session_ids: [_]}}
    end

    @tag snakeport: [session_store: [cleanup_interval: 50]]
    test "the worker's own events become telemetry (refs pruned by the worker's TTL sweep)" do
      capture_events([[:snakeport, :worker, :refs_pruned]])

      # The harness sweep releases idle sessions; the worker prunes idle refs on its own.
      # Keep the session busy (plain calls) while its ref stays unused.
      SessionContext.with_session([ttl_seconds: 1], fn ->
        {:ok, ref} = Snakeport.call(@mod, "Box", [1])
        sid = ref.session_id

        ids =
          eventually(fn ->
            {:ok, 3} = Snakeport.call("operator", "add", [1, 2])

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

        assert {:ok, %{refs: 0}} = Snakeport.session_info(sid)
      end)
    end

    test "a handler that raises is detached and logged" do
      parent = self()

      :ok =
        Snakeport.Telemetry.attach(:bad_handler, [:snakeport, :test, :event], fn _, _, _, _ ->
          send(parent, :called)
          raise "handler bug"
        end)

      log =
        capture_log(fn -> Snakeport.Telemetry.execute([:snakeport, :test, :event], %{}, %{}) end)

      assert_received :called
      assert log =~ "handler bug"
      assert Snakeport.Telemetry.list_handlers([:snakeport, :test]) == []
      Snakeport.Telemetry.execute([:snakeport, :test, :event], %{}, %{})
      refute_received :called
      assert {:error, :not_found} = Snakeport.Telemetry.detach(:bad_handler)
    end
  end
end
