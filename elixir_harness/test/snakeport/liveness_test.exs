defmodule Snakeport.LivenessTest do
  # Issue 11: stuck, runaway and orphaned work. Real workers, real OS processes killed with
  # real signals, a real second BEAM. Not async: the timing bounds below (a call's duration
  # with a full mailbox against the same calls without it, callers killed mid-call) must
  # not compete with the other modules' workers for the CPUs.
  use Snakeport.Case, async: false

  alias Snakeport.Defaults

  @mod "snakeport_harness_testmod"
  @interval Defaults.liveness_interval()

  # The ready worker `index` (Snakeport.Worker's entry: pid, os_pid, pending table, ...).
  defp worker(index \\ 0), do: Enum.find(workers(@instance), &(&1.index == index))

  # A fresh directory for a test's flag files, removed when it ends.
  defp tmp_dir! do
    dir = Path.join(System.tmp_dir!(), "snakeport-liveness-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)
    dir
  end

  defp now, do: System.monotonic_time(:millisecond)

  # Whether OS process `pid` has ended (a zombie has: it only waits to be reaped).
  defp os_gone?(pid) do
    case File.read("/proc/#{pid}/stat") do
      # "pid (comm) state ...": the state follows the last ")".
      {:ok, stat} ->
        stat
        |> String.split(")")
        |> List.last()
        |> String.trim_leading()
        |> String.starts_with?("Z")

      {:error, _} ->
        true
    end
  end

  defp kill_os(pid),
    do: System.cmd("kill", ["-KILL", Integer.to_string(pid)], stderr_to_stdout: true)

  # Makes sure an OS process started by a test does not outlive it.
  defp reap_on_exit(pid), do: on_exit(fn -> unless os_gone?(pid), do: kill_os(pid) end)

  # A call in a new process (hence a new auto-session).
  defp fresh_call(opts \\ []) do
    Task.async(fn ->
      Snakeport.call("operator", "add", [1, 2], Keyword.merge([instance: @instance], opts))
    end)
    |> Task.await(30_000)
  end

  describe "row 1: a call that ignores its cancel" do
    @tag snakeport: [cancel_grace: 300, stuck_timeout: 700]
    test "time.sleep(1_000_000): the worker is marked stuck, gets no new session, is killed and restarted" do
      capture_events(
        [
          [:snakeport, :worker, :stuck],
          [:snakeport, :worker, :exited],
          [:snakeport, :worker, :started]
        ],
        @instance
      )

      %{os_pid: old_os_pid} = worker()
      reap_on_exit(old_os_pid)

      {owner, result} =
        start_owner(fn ->
          Snakeport.call("time", "sleep", [1_000_000],
            session: "hung",
            timeout: 200,
            instance: @instance
          )
        end)

      assert {:error, %Error{reason: :timeout}} = result
      timed_out = now()

      # The cancel cannot reach C code: after :cancel_grace the worker is stuck.
      assert_receive {:event, [:snakeport, :worker, :stuck], %{overdue: 1}, %{worker: 0}},
                     300 + 3 * @interval + 1_000

      assert now() - timed_out >= 300

      # No new session goes there (and there is no other worker).
      assert {:error, %Error{reason: :no_workers}} = fresh_call()

      # stats/1 answers from the harness's state: a stuck worker is not even asked.
      {us, {:ok, %{workers: [w]}}} = :timer.tc(fn -> Snakeport.stats(instance: @instance) end)
      assert us < Defaults.stats_timeout() * 1000
      assert %{status: :stuck, os_pid: ^old_os_pid, pending: 0, stuck_ms: stuck_ms} = w
      assert stuck_ms >= 0

      # :stuck_timeout later it is killed (SIGKILL: status 137) and a new worker starts.
      assert_receive {:event, [:snakeport, :worker, :exited], _,
                      %{reason: {:shutdown, {:stuck_killed, 137}}}},
                     700 + 3 * @interval + Defaults.kill_wait() + 1_000

      killed = now()
      assert os_gone?(old_os_pid)
      # The documented deadline: :cancel_grace + :stuck_timeout (+ the checks' interval).
      assert killed - timed_out <= 300 + 700 + 3 * @interval + 500

      assert_receive {:event, [:snakeport, :worker, :started], _, %{worker: 0, os_pid: new}},
                     10_000

      assert new != old_os_pid
      assert {:ok, 3} = fresh_call()

      # Its sessions are lost, as after a crash.
      assert {:error, %Error{reason: :session_lost}} =
               run_in(owner, fn ->
                 Snakeport.call("operator", "add", [1, 2], session: "hung", instance: @instance)
               end)
    end

    @tag snakeport: [cancel_grace: 300, stuck_timeout: 500]
    test "a call holding the GIL (regex backtracking): stats wait a bounded time, then restart" do
      dir = tmp_dir!()
      capture_events([[:snakeport, :worker, :exited], [:snakeport, :worker, :started]], @instance)
      # The worker's stats, while it can answer.
      assert {:ok, %{workers: [%{status: :up}]}} = Snakeport.stats(instance: @instance)
      %{os_pid: old_os_pid} = worker()
      reap_on_exit(old_os_pid)
      flag = Path.join(dir, "running")

      task =
        Task.async(fn ->
          Snakeport.call(@mod, "regex_bomb", [flag],
            timeout: 300,
            session: "bomb",
            instance: @instance
          )
        end)

      eventually(fn -> File.exists?(flag) end)

      # The worker's reader cannot run: its own stats do not come; stats/1 waits at most its
      # :timeout (Defaults.stats_timeout/0) and reports the last stats the worker gave.
      {us, stats} = :timer.tc(fn -> Snakeport.stats(instance: @instance) end)
      assert us < (Defaults.stats_timeout() + 300) * 1000, "stats/1 took #{div(us, 1000)} ms"
      assert {:ok, %{workers: [w]}} = stats
      assert %{status: status, stats_age_ms: age, refs: 0, threads: 1} = w
      assert status in [:busy, :stuck] and age > 0

      assert {:error, %Error{reason: :timeout}} = Task.await(task)

      assert_receive {:event, [:snakeport, :worker, :exited], _,
                      %{reason: {:shutdown, {:stuck_killed, 137}}}},
                     300 + 500 + 4 * @interval + Defaults.kill_wait() + 1_000

      assert os_gone?(old_os_pid)
      assert_receive {:event, [:snakeport, :worker, :started], _, %{worker: 0}}, 10_000
      assert {:ok, 3} = fresh_call()
    end

    @tag snakeport: [cancel_grace: 200, stuck_timeout: :infinity]
    test "a stuck worker whose call ends is not stuck any more (and :infinity never kills)" do
      capture_events(
        [[:snakeport, :worker, :stuck], [:snakeport, :worker, :recovered]],
        @instance
      )

      task =
        Task.async(fn ->
          Snakeport.call(@mod, "sleep", [1.5], timeout: 100, session: "slow", instance: @instance)
        end)

      assert {:error, %Error{reason: :timeout}} = Task.await(task)
      assert_receive {:event, [:snakeport, :worker, :stuck], _, _}, 2_000
      assert_receive {:event, [:snakeport, :worker, :recovered], %{stuck_ms: _}, _}, 3_000
      assert {:ok, %{workers: [%{status: :up}]}} = Snakeport.stats(instance: @instance)
      assert {:ok, 3} = fresh_call()
    end
  end

  describe "row 1b: a port that does not take frames" do
    defp call_in(session, args, timeout),
      do:
        Snakeport.call(@mod, "echo", args, timeout: timeout, session: session, instance: @instance)

    # The worker's reader cannot run (code holding the GIL), so its stdin pipe fills and the
    # port becomes busy: a caller must still get its answer at its own deadline, not when
    # the worker is killed (here never: :stuck_timeout is :infinity).
    @tag snakeport: [cancel_grace: 60_000, stuck_timeout: :infinity]
    test "callers of a worker that does not read its stdin time out at their deadline" do
      dir = tmp_dir!()
      %{os_pid: os_pid} = worker()
      reap_on_exit(os_pid)
      flag = Path.join(dir, "running")
      # The callers' sessions are open before: their calls go straight to the port.
      for i <- 0..2, do: assert({:ok, 0} = call_in("busy-#{i}", [0], 5_000))

      bomb =
        Task.async(fn ->
          Snakeport.call(@mod, "regex_bomb", [flag], session: "bomb", instance: @instance)
        end)

      eventually(fn -> File.exists?(flag) end)
      # 8 MiB: more than the pipe (1 MiB at most) holds; the rest waits in the port's queue,
      # which makes the port busy.
      big = :binary.copy("x", 8 * 1024 * 1024)

      callers =
        for {args, i} <- Enum.with_index([[big], [1], [2]]) do
          Task.async(fn ->
            {us, result} = :timer.tc(fn -> call_in("busy-#{i}", args, 300) end)

            {div(us, 1000), result}
          end)
        end

      # Each answers at its deadline (300 ms, plus slack for a loaded machine), although
      # the port stays busy.
      for caller <- callers do
        assert {:ok, {ms, {:error, %Error{reason: :timeout}}}} = Task.yield(caller, 5_000)
        assert ms < 2_000, "a caller waited #{ms} ms for a busy port"
      end

      # (The session store, which writes through the same port, waits for it too.)
      assert {:error, %Error{reason: :timeout}} = call_in("busy-new", [3], 300)

      # The instance recovers once the worker is gone.
      capture_events([[:snakeport, :worker, :started]], @instance)
      kill_os(os_pid)
      assert {:error, %Error{reason: :worker_exited}} = Task.await(bomb, 10_000)
      assert_receive {:event, [:snakeport, :worker, :started], _, %{worker: 0}}, 10_000
      assert {:ok, 3} = fresh_call()
    end
  end

  describe "row 2: work outlives its caller" do
    @tag snakeport: [pool_size: 1]
    test "10 callers killed during time.sleep(1) do not delay the next call (shared session)" do
      # The test process owns the session: the callers' deaths do not release it, so only the
      # harness noticing its dead callers cancels their requests.
      assert {:ok, 3} =
               Snakeport.call("operator", "add", [1, 2], session: "shared", instance: @instance)

      entry = worker()

      callers =
        for _ <- 1..10 do
          spawn(fn ->
            Snakeport.call(@mod, "sleep", [1],
              session: "shared",
              timeout: 60_000,
              instance: @instance
            )
          end)
        end

      eventually(fn -> :ets.info(entry.pending, :size) == 10 end)
      Enum.each(callers, &Process.exit(&1, :kill))

      {us, result} =
        :timer.tc(fn ->
          Snakeport.call("operator", "add", [1, 2],
            session: "shared",
            timeout: 60_000,
            instance: @instance
          )
        end)

      assert {:ok, 3} = result
      # At most the rest of the one sleep(1) that was running (it cannot be interrupted);
      # the nine queued ones are gone (before: 9 s more).
      assert us < 2_000_000, "the next call took #{div(us, 1000)} ms"
      eventually(fn -> :ets.info(entry.pending, :size) == 0 end)
      eventually(fn -> match?({:ok, %{in_flight: 0}}, Snakeport.stats(instance: @instance)) end)
    end

    @tag snakeport: [pool_size: 1]
    test "callers killed in their own auto-sessions: the releases drop their calls" do
      callers =
        for _ <- 1..10 do
          spawn(fn -> Snakeport.call(@mod, "sleep", [1], timeout: 60_000, instance: @instance) end)
        end

      entry = worker()
      eventually(fn -> :ets.info(entry.pending, :size) == 10 end)
      Enum.each(callers, &Process.exit(&1, :kill))
      {us, result} = :timer.tc(fn -> fresh_call(timeout: 60_000) end)
      assert {:ok, 3} = result
      assert us < 2_000_000, "the next call took #{div(us, 1000)} ms"
      eventually(fn -> harness_sessions(@instance) == 0 end)
    end

    @tag snakeport: [pool_size: 1]
    test "release_session cancels the session's running call and is answered at once" do
      assert {:ok, 3} =
               Snakeport.call("operator", "add", [1, 2], session: "doomed", instance: @instance)

      task =
        Task.async(fn ->
          Snakeport.call(@mod, "spin", [60],
            session: "doomed",
            timeout: 60_000,
            instance: @instance
          )
        end)

      eventually(fn -> match?({:ok, %{in_flight: 1}}, Snakeport.stats(instance: @instance)) end)

      {us, released} =
        :timer.tc(fn -> Snakeport.release_session("doomed", instance: @instance) end)

      assert {:ok, 0} = released
      assert us < 1_000_000
      assert {:error, %Error{reason: :cancelled}} = Task.await(task, 5_000)
    end
  end

  describe "row 3: workers never outlive the VM" do
    @tag snakeport: false
    test "kill -9 of the BEAM while its worker holds the GIL: the worker is gone within 1 s" do
      dir = tmp_dir!()
      elixir = System.find_executable("elixir") || flunk("no elixir executable on PATH")
      ebin = Path.join(:code.lib_dir(:snakeport), "ebin")
      flag = Path.join(dir, "running")
      script = Path.join(dir, "beam.exs")

      File.write!(script, """
      {:ok, _} = Application.ensure_all_started(:snakeport)
      {:ok, _} = Snakeport.start_link(python: #{inspect(python())}, pool_size: 1,
                                      python_path: [#{inspect(python_dir())}])
      {:ok, %{workers: [%{os_pid: os_pid}]}} = Snakeport.stats()
      IO.puts("READY \#{System.pid()} \#{os_pid}")
      spawn(fn -> Snakeport.call(#{inspect(@mod)}, "regex_bomb", [#{inspect(flag)}], timeout: :infinity) end)
      Process.sleep(:infinity)
      """)

      port =
        Port.open({:spawn_executable, elixir}, [
          :binary,
          :exit_status,
          {:line, 4096},
          :stderr_to_stdout,
          args: ["-pa", ebin, script]
        ])

      {beam, worker} = read_ready(port)
      reap_on_exit(worker)
      reap_on_exit(beam)
      eventually(fn -> File.exists?(flag) end)
      refute os_gone?(worker)

      kill_os(beam)
      eventually(fn -> os_gone?(beam) end)
      killed = now()
      eventually(fn -> os_gone?(worker) end, 1_000, 10)
      assert now() - killed <= 1_000
    end

    @tag snakeport: [pool_size: 1]
    test "stopping the instance kills a worker that holds the GIL" do
      dir = tmp_dir!()
      %{os_pid: os_pid} = worker()
      reap_on_exit(os_pid)
      flag = Path.join(dir, "running")

      spawn(fn ->
        Snakeport.call(@mod, "regex_bomb", [flag], timeout: :infinity, instance: @instance)
      end)

      eventually(fn -> File.exists?(flag) end)
      # Orderly: `shutdown` is not read, the end of its stdin neither; it is killed.
      :ok = stop_supervised!(@instance)
      assert os_gone?(os_pid)
    end
  end

  describe "row 4: restart storms" do
    @tag snakeport: [pool_size: 2, max_restart_backoff: 20]
    test "20 fast kills of one worker leave the other worker and its sessions alone" do
      {survivor, ref} =
        start_owner(fn ->
          Snakeport.call!(@mod, "Box", [7], session: "kept", instance: @instance)
        end)

      # Place a session on worker 0 too (the least loaded now).
      {victim_owner, _} =
        start_owner(fn -> Snakeport.call!(@mod, "Box", [1], instance: @instance) end)

      target = if ref.worker == 0, do: 1, else: 0
      %{pid: survivor_pid, os_pid: survivor_os} = worker(ref.worker)

      for _ <- 1..20 do
        %{os_pid: os_pid} = eventually(fn -> worker(target) end, 10_000)
        kill_os(os_pid)
        eventually(fn -> match?(%{os_pid: new} when new != os_pid, worker(target)) end, 10_000)
      end

      # The healthy worker was never restarted, and its session works.
      assert %{pid: ^survivor_pid, os_pid: ^survivor_os} = worker(ref.worker)

      assert {:ok, 7} =
               run_in(survivor, fn ->
                 Snakeport.get_attr(ref, "value", session: "kept", instance: @instance)
               end)

      stop(victim_owner)
      # New sessions go to the restarted worker again (it holds none).
      placed =
        for _ <- 1..3 do
          {_pid, box} =
            start_owner(fn -> Snakeport.call!(@mod, "Box", [1], instance: @instance) end)

          box.worker
        end

      assert Enum.count(placed, &(&1 == target)) >= 2, inspect(placed)
    end

    test "the worker supervisor's intensity exceeds what the backoff lets one worker do" do
      # Under the backoff (100 ms doubling to the max), one worker restarts at most
      # 1 + log2(max/100) + 5000/max times in 5 s.
      for max <- [1, 20, 100, 5_000, 600_000] do
        steps = if max > 100, do: ceil(:math.log2(max / 100)) + 1, else: 1
        assert Snakeport.Supervisor.restarts_per_worker(max) >= 1 + steps + div(5_000, max)
      end
    end
  end

  describe "row 5: a full mailbox" do
    @tag snakeport: [pool_size: 1]
    test "100,000 unrelated messages do not slow calls down" do
      # Measured in the caller's reductions, not in time: the VM charges a receive one
      # reduction per message it scans, so a receive that scanned the whole mailbox would
      # cost 100,000 more per call (checked below on a receive without the optimisation),
      # while the clock also counts whatever else the machine is doing.
      call = fn -> {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance) end
      cost = fn fun -> reductions(fn -> Enum.each(1..200, fn _ -> fun.() end) end) end
      foreign = make_ref()

      scan = fn ->
        send(self(), {foreign, :x})
        receive(do: ({^foreign, :x} -> :ok))
      end

      cost.(call)
      empty = cost.(call)
      empty_scan = cost.(scan)

      for i <- 1..100_000, do: send(self(), {:unrelated, i})
      full = cost.(call)
      full_scan = cost.(scan)
      assert {:message_queue_len, 100_000} = Process.info(self(), :message_queue_len)

      # The yardstick: a receive that scans pays for every message it passes.
      assert full_scan - empty_scan > 100 * 100_000
      # Before: each call's receive scanned the whole mailbox, like the yardstick. (The
      # calls' own cost varies with the machine's load: 55k here, 60-125k with the
      # messages; a tenth of the scan per call is 2,000,000.)
      assert full - empty < 200 * 10_000,
             "200 calls: #{empty} reductions, with the messages #{full}"
    end

    test "the request and its receive are one function, with the receive optimisation" do
      {:beam_file, _, _, _, _, code} = :beam_disasm.file(:code.which(Snakeport.Worker))

      ops =
        for {:function, :request, 4, _, instructions} <- code,
            i <- instructions,
            is_tuple(i),
            do: elem(i, 0)

      assert :recv_marker_reserve in ops and :recv_marker_use in ops
    end
  end

  # A caller that times out claims its pending row; when the row is gone already, whoever
  # took it (the worker process routing the reply, or telling of its stop) is sending its
  # message, and the caller receives it (Snakeport.Worker, *Reply tags*). The test takes
  # the row itself, standing in for the worker process at the moment it took it, so that
  # the caller finds it gone.
  describe "row 6: a timeout that races its reply" do
    # Takes the pending row of `caller`'s request once it is written; returns {id, tag}.
    defp take_row(entry, caller) do
      eventually(fn -> match?([{_, _, ^caller}], :ets.tab2list(entry.pending)) end)
      [{id, tag, ^caller}] = :ets.tab2list(entry.pending)
      [_] = :ets.take(entry.pending, id)
      {id, tag}
    end

    defp waiting_for_taken?(pid),
      do:
        Process.info(pid, :current_function) ==
          {:current_function, {Snakeport.Worker, :await_taken, 3}}

    # spin(1) with a 300 ms timeout in a new process, which then runs `later` and reports
    # the call's result and what is left in its mailbox.
    defp racing_call(later) do
      Task.async(fn ->
        result = Snakeport.call(@mod, "spin", [1], timeout: 300, instance: @instance)
        later.()
        {result, Process.info(self(), :messages)}
      end)
    end

    @tag snakeport: [pool_size: 1]
    test "the row taken when the caller timed out: the caller gets that message, and nothing is left" do
      entry = worker()

      # The next call waits for spin(1), whose reply finds no row (dropped) before its own.
      task =
        racing_call(fn ->
          {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
        end)

      {id, tag} = take_row(entry, task.pid)
      eventually(fn -> waiting_for_taken?(task.pid) end)

      send(task.pid, {tag, :erlang.term_to_binary({:reply, id, :ok, 42})})
      assert {{:ok, 42}, {:messages, []}} = Task.await(task, 15_000)
    end

    @tag snakeport: [pool_size: 1]
    test "the row taken by a worker process killed before it answered: :timeout, bounded" do
      entry = worker()
      test = self()

      # Reports once the killed worker's table is gone (its heir, the Pool, told its
      # callers and deleted it) and a new worker is ready.
      task =
        racing_call(fn ->
          send(test, :returned)
          receive(do: (:report -> :ok))
        end)

      {_id, _tag} = take_row(entry, task.pid)
      eventually(fn -> waiting_for_taken?(task.pid) end)

      started = now()
      Process.exit(entry.pid, :kill)
      assert_receive :returned, Defaults.kill_wait() + 5_000
      assert now() - started < Defaults.kill_wait() + 1_000
      eventually(fn -> :ets.info(entry.pending, :owner) == :undefined end)
      eventually(fn -> worker() != nil and worker().pid != entry.pid end)

      send(task.pid, :report)
      assert {{:error, %Error{reason: :timeout}}, {:messages, []}} = Task.await(task, 5_000)
    end

    # Snakeport.Worker.await/2 (stats, the courier, admin requests) also monitors the
    # worker: its :DOWN usually comes before the Pool's notice for the same request.
    @tag snakeport: [pool_size: 1]
    test "send_request/await, the worker process killed: one answer, and the Pool's notice is not left behind" do
      entry = worker()
      request = Snakeport.Protocol.call(@mod, "spin", [5], %{}, %{})
      {:ok, session} = Snakeport.Sessions.checkout(inst(@instance), nil, nil, 5_000)
      {:ok, handle} = Snakeport.Worker.send_request(entry, request, session.id)

      Process.exit(entry.pid, :kill)
      assert {:error, {:down, :killed}} = Snakeport.Worker.await(handle, 10_000)
      eventually(fn -> :ets.info(entry.pending, :owner) == :undefined end)
      assert {:messages, []} = Process.info(self(), :messages)
    end
  end

  defp reductions(fun) do
    {:reductions, before} = Process.info(self(), :reductions)
    fun.()
    {:reductions, later} = Process.info(self(), :reductions)
    later - before
  end

  defp read_ready(port, acc \\ "") do
    receive do
      {^port, {:data, {:eol, line}}} ->
        case String.split(acc <> line) do
          ["READY", beam, worker] -> {String.to_integer(beam), String.to_integer(worker)}
          _ -> read_ready(port, "")
        end

      {^port, {:data, {:noeol, part}}} ->
        read_ready(port, acc <> part)

      {^port, {:exit_status, status}} ->
        flunk("the BEAM exited with status #{status} before it was ready")
    after
      60_000 -> flunk("the BEAM did not get ready")
    end
  end
end
