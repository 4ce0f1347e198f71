defmodule Snakeport.WorkersTest do
  use Snakeport.Case, async: true

  @mod "snakeport_harness_testmod"

  defp worker_stats(index) do
    {:ok, %{workers: workers}} = Snakeport.stats(instance: @instance)
    Enum.find(workers, &(&1.index == index))
  end

  describe "pool" do
    @tag snakeport: [pool_size: 2]
    test "stats: aggregate and per worker" do
      assert {:ok, stats} = Snakeport.stats(instance: @instance)
      assert %{pool_size: 2, sessions: 0, refs: 0, workers: [w0, w1]} = stats
      assert %{index: 0, status: :up, os_pid: p0, threads: 1, fast_path: fast} = w0

      # (On with one thread where the worker's C extensions are built, as `make test` builds them.)
      assert fast == System.get_env("SNAKEPORT_PURE_PYTHON", "") in ["", "0"]
      assert %{index: 1, status: :up, os_pid: p1} = w1
      assert is_integer(p0) and is_integer(p1) and p0 != p1
      assert Snakeport.stats!(instance: @instance) |> Map.has_key?(:in_flight)
    end

    @tag snakeport: [pool_size: 2]
    test "a session is pinned to the least-loaded worker for its whole life" do
      {a, ra} = start_owner(fn -> Snakeport.call!(@mod, "Box", [1], instance: @instance) end)
      {b, rb} = start_owner(fn -> Snakeport.call!(@mod, "Box", [2], instance: @instance) end)
      assert {ra.worker, rb.worker} == {0, 1}

      for _ <- 1..5 do
        assert %Ref{worker: 0} =
                 run_in(a, fn -> Snakeport.call!(@mod, "Box", [1], instance: @instance) end)

        assert %Ref{worker: 1} =
                 run_in(b, fn -> Snakeport.call!(@mod, "Box", [1], instance: @instance) end)
      end

      assert %{harness_sessions: 1, refs: 6} = worker_stats(0)
      assert %{harness_sessions: 1, refs: 6} = worker_stats(1)
      stop(a)
      stop(b)
      eventually(fn -> python_refs(@instance) == 0 end)
    end
  end

  describe "worker death" do
    @tag snakeport: [pool_size: 2]
    test "killing the Python process mid-call: :worker_exited at once, restart, sessions of other workers intact" do
      capture_events(
        [
          [:snakeport, :worker, :exited],
          [:snakeport, :worker, :started],
          [:snakeport, :session, :lost]
        ],
        @instance
      )

      {a, ref_a} = start_owner(fn -> box_in("victim-#{System.unique_integer([:positive])}") end)
      {b, ref_b} = start_owner(fn -> box_in("survivor-#{System.unique_integer([:positive])}") end)
      assert {ref_a.worker, ref_b.worker} == {0, 1}
      %{os_pid: victim_os_pid} = worker_stats(0)

      # A long call in flight on worker 0 (60 s timeout).
      caller =
        Task.async(fn ->
          run_in(a, fn ->
            Snakeport.call(@mod, "spin", [60],
              timeout: 60_000,
              session: ref_a.session_id,
              instance: @instance
            )
          end)
        end)

      eventually(fn -> worker_stats(0).in_flight == 1 end)

      started = System.monotonic_time(:millisecond)
      {_, 0} = System.cmd("kill", ["-9", Integer.to_string(victim_os_pid)])

      assert {:error, %Error{reason: :worker_exited, details: %{exit_status: 137}}} =
               Task.await(caller, 5_000)

      assert System.monotonic_time(:millisecond) - started < 2_000

      assert_receive {:event, [:snakeport, :worker, :exited], _,
                      %{worker: 0, os_pid: ^victim_os_pid}},
                     5_000

      assert_receive {:event, [:snakeport, :worker, :started], _,
                      %{worker: 0, os_pid: new_os_pid}},
                     10_000

      assert new_os_pid != victim_os_pid

      assert_receive {:event, [:snakeport, :session, :lost], %{count: 1},
                      %{worker: 0, session_ids: [lost_id]}},
                     5_000

      assert lost_id == ref_a.session_id

      # The other worker's session is untouched.
      assert {:ok, 1} = run_in(b, fn -> Snakeport.method(ref_b, "get") end)
      assert %{status: :up, refs: 1} = worker_stats(1)

      # The killed worker's session is lost: its refs and its calls say so.
      assert {:error, %Error{reason: :session_lost}} =
               run_in(a, fn -> Snakeport.method(ref_a, "get") end)

      assert {:error, %Error{reason: :session_lost}} =
               run_in(a, fn ->
                 SessionContext.with_session(
                   [instance: @instance, session_id: ref_a.session_id],
                   fn ->
                     Snakeport.call(@mod, "Box", [1], instance: @instance)
                   end
                 )
               end)

      assert {:ok, %{lost: true, refs: 0}} =
               Snakeport.session_info(ref_a.session_id, instance: @instance)

      # Releasing a lost session clears it; the id then starts afresh on a live worker.
      assert {:ok, 0} = Snakeport.release_session(ref_a.session_id, instance: @instance)

      assert {:ok, %Ref{}} =
               run_in(a, fn ->
                 SessionContext.with_session(
                   [instance: @instance, session_id: ref_a.session_id],
                   fn ->
                     Snakeport.call(@mod, "Box", [1], instance: @instance)
                   end
                 )
               end)

      # New auto-sessions work on the restarted worker too.
      assert %{status: :up, os_pid: ^new_os_pid} = worker_stats(0)
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
      stop(a)
      stop(b)
    end

    # The callers' reply aliases carry no monitor of the worker: a worker process killed
    # (no terminate/2 runs) must still reach its callers in flight at once.
    @tag snakeport: [pool_size: 1]
    test "the worker process killed mid-call: its callers get :worker_exited at once" do
      [%{pid: worker_pid}] = workers(@instance)

      callers =
        for _ <- 1..3 do
          Task.async(fn ->
            Snakeport.call(@mod, "spin", [60], timeout: 60_000, instance: @instance)
          end)
        end

      eventually(fn -> worker_stats(0).in_flight == 3 end)

      started = System.monotonic_time(:millisecond)
      Process.exit(worker_pid, :kill)

      for caller <- callers do
        assert {:error, %Error{reason: :worker_exited, details: %{reason: :killed}}} =
                 Task.await(caller, 5_000)
      end

      assert System.monotonic_time(:millisecond) - started < 2_000
    end

    test "a worker that died before the session store noticed: the next plain call moves to a new auto-session" do
      capture_events([[:snakeport, :worker, :started]], @instance)

      {a, {:ok, 3}} =
        start_owner(fn -> Snakeport.call("operator", "add", [1, 2], instance: @instance) end)

      [%{pid: worker_pid}] = workers(@instance)
      old_id = run_in(a, fn -> Snakeport.Sessions.auto_id(@instance) end)

      # The store does not see the worker die (suspended), so `a`'s auto-session row is not
      # marked lost: the call itself finds the worker gone.
      :ok = :sys.suspend(store(@instance))

      try do
        mref = Process.monitor(worker_pid)
        Process.exit(worker_pid, :kill)
        assert_receive {:DOWN, ^mref, :process, ^worker_pid, :killed}
        assert_receive {:event, [:snakeport, :worker, :started], _, _}, 10_000
        # The event comes just before the new worker is registered in the pool.
        eventually(fn -> match?([%{pid: pid}] when pid != worker_pid, workers(@instance)) end)

        send(
          a,
          {:run, fn -> Snakeport.call("operator", "add", [2, 3], instance: @instance) end, self()}
        )
      after
        :ok = :sys.resume(store(@instance))
      end

      assert_receive {:ran, ^a, {:ok, 5}}, 10_000
      new_id = run_in(a, fn -> Snakeport.Sessions.auto_id(@instance) end)
      assert new_id != old_id

      assert {:ok, %{auto: true, lost: false, owners: [^a]}} =
               Snakeport.session_info(new_id, instance: @instance)

      stop(a)
    end

    # max_sessions: 1 - the lost row, kept for its refs, does not count against the quota.
    @tag snakeport: [session_store: [max_sessions: 1]]
    test "a lost auto-session does not lock its process out: the next plain call gets a new auto-session, the old refs answer :session_lost" do
      capture_events([[:snakeport, :worker, :started], [:snakeport, :session, :lost]], @instance)

      {a, box} = start_owner(fn -> Snakeport.call!(@mod, "Box", [7], instance: @instance) end)
      old_id = box.session_id

      assert {:ok, %{auto: true, owners: [^a], os_pid: victim_os_pid}} =
               Snakeport.session_info(old_id, instance: @instance)

      # A long call of `a` in flight in its auto-session.
      send(
        a,
        {:run, fn -> Snakeport.call(@mod, "spin", [60], timeout: 60_000, instance: @instance) end,
         self()}
      )

      eventually(fn -> worker_stats(0).in_flight == 1 end)
      {_, 0} = System.cmd("kill", ["-9", Integer.to_string(victim_os_pid)])

      # The caller in flight learns at once.
      assert_receive {:ran, ^a, {:error, %Error{reason: :worker_exited}}}, 5_000

      assert_receive {:event, [:snakeport, :session, :lost], _, %{session_ids: [^old_id]}},
                     5_000

      assert_receive {:event, [:snakeport, :worker, :started], _, %{os_pid: new_os_pid}}, 10_000
      assert new_os_pid != victim_os_pid

      # The same process's next plain calls run in a new auto-session on the live worker.
      assert {:ok, 3} =
               run_in(a, fn -> Snakeport.call("operator", "add", [1, 2], instance: @instance) end)

      assert {:ok, %Ref{session_id: new_id} = box2} =
               run_in(a, fn -> Snakeport.call(@mod, "Box", [2], instance: @instance) end)

      assert new_id != old_id
      assert "auto-" <> _ = new_id

      assert {:ok, %{auto: true, lost: false, owners: [^a], os_pid: ^new_os_pid, refs: 1}} =
               Snakeport.session_info(new_id, instance: @instance)

      assert {:ok, 2} = run_in(a, fn -> Snakeport.method(box2, "get") end)

      # The old session's refs still say what happened to them, as a target or an argument,
      # in the owner or in another process.
      assert {:error, %Error{reason: :session_lost, details: %{session: ^old_id}}} =
               run_in(a, fn -> Snakeport.method(box, "get") end)

      assert {:error, %Error{reason: :session_lost}} =
               run_in(a, fn -> Snakeport.call(@mod, "echo", [box], instance: @instance) end)

      assert {:error, %Error{reason: :session_lost}} =
               Task.await(Task.async(fn -> Snakeport.method(box, "get") end))

      assert {:ok, %{lost: true}} = Snakeport.session_info(old_id, instance: @instance)

      # Both sessions end with their owners.
      stop(a)
      eventually(fn -> released?(old_id, @instance) and released?(new_id, @instance) end)
      eventually(fn -> python_refs(@instance) == 0 end)
    end

    test "callers learn of a worker stop at once, and a new worker takes over" do
      %{os_pid: os_pid} = worker_stats(0)
      parent = self()

      callers =
        for i <- 1..5 do
          spawn(fn ->
            send(
              parent,
              {:result, i,
               Snakeport.call(@mod, "spin", [60],
                 timeout: 60_000,
                 session: "s#{i}",
                 instance: @instance
               )}
            )
          end)
        end

      eventually(fn -> worker_stats(0).in_flight >= 1 end)
      {_, 0} = System.cmd("kill", ["-9", Integer.to_string(os_pid)])

      for i <- 1..length(callers) do
        assert_receive {:result, ^i, {:error, %Error{reason: reason}}}, 5_000
        # Calls already written to the dead port: :worker_exited; calls of sessions whose
        # worker was gone before they were sent: :session_lost.
        assert reason in [:worker_exited, :session_lost]
      end

      eventually(fn ->
        match?(%{status: :up}, worker_stats(0)) and worker_stats(0).os_pid != os_pid
      end)

      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
    end

    test "the Python process ends when the harness stops; its answer to shutdown is seen" do
      capture_events([[:snakeport, :worker, :reply_dropped]], @instance)
      %{os_pid: os_pid} = worker_stats(0)
      :ok = stop_supervised(@instance)
      assert_received {:event, [:snakeport, :worker, :reply_dropped], _, %{outcome: :ok}}
      # After an orderly stop the worker has exited: `kill -0` finds no such process.
      eventually(fn ->
        match?(
          {_, 1},
          System.cmd("kill", ["-0", Integer.to_string(os_pid)], stderr_to_stdout: true)
        )
      end)
    end
  end

  describe "concurrency" do
    @tag snakeport: [pool_size: 2], timeout: 120_000
    test "200 processes x 50 calls each" do
      results =
        1..200
        |> Enum.map(fn p ->
          Task.async(fn ->
            for i <- 1..50 do
              {:ok, sum} = Snakeport.call("operator", "add", [p, i], instance: @instance)
              sum
            end
          end)
        end)
        |> Task.await_many(60_000)

      for {sums, p} <- Enum.with_index(results, 1) do
        assert sums == Enum.map(1..50, &(&1 + p))
      end

      # The 200 auto-sessions die with their tasks.
      eventually(fn -> harness_sessions(@instance) == 0 end, 10_000)

      eventually(fn ->
        match?({:ok, %{python_sessions: 0, refs: 0}}, Snakeport.stats(instance: @instance))
      end)
    end

    @tag timeout: 120_000
    test "64 concurrent callers on one worker, with refs, in one shared session" do
      session_id = "many-#{System.unique_integer([:positive])}"

      counter =
        SessionContext.with_session([instance: @instance, session_id: session_id], fn ->
          Snakeport.call!("collections", "Counter", [], result: :ref, instance: @instance)
        end)

      1..64
      |> Enum.map(fn n ->
        Task.async(fn ->
          SessionContext.with_session([instance: @instance, session_id: session_id], fn ->
            for _ <- 1..20,
                do: {:ok, nil} = Snakeport.method(counter, "update", [["k#{rem(n, 4)}"]])
          end)
        end)
      end)
      |> Task.await_many(60_000)

      assert {:ok, counts} =
               Snakeport.call("builtins", "dict", [counter],
                 session: session_id,
                 instance: @instance
               )

      assert counts == %{"k0" => 320, "k1" => 320, "k2" => 320, "k3" => 320}
    end
  end

  defp box_in(session_id) do
    SessionContext.with_session([instance: @instance, session_id: session_id], fn ->
      Snakeport.call!(@mod, "Box", [1], instance: @instance)
    end)
  end
end
