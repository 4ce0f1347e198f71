defmodule Snakeport.StartTest do
  use Snakeport.Case, async: false

  import ExUnit.CaptureLog

  @moduletag snakeport: false

  doctest Snakeport
  doctest Snakeport.Error
  doctest Snakeport.Ref
  doctest Snakeport.SessionContext
  doctest Snakeport.Telemetry

  describe "option validation" do
    test "messages name the option, what was expected and what was given" do
      for {opts, message} <- [
            {[pool_size: -1], "expected :pool_size to be a non-negative integer, got: -1"},
            {[pool_size: 1.5], "expected :pool_size to be a non-negative integer, got: 1.5"},
            {[tags: :gpu], "expected :tags to be a list of atoms, got: :gpu"},
            {[tags: ["gpu"]], ~s(expected :tags to be a list of atoms, got: ["gpu"])},
            {[placement: :nearest],
             "expected :placement to be :local, :any, {:node, node} (or node: node) or " <>
               "{:tags, [atom, ...]} (or tags: [...]), got: :nearest"},
            {[placement: {:tags, []}],
             "expected :placement to be :local, :any, {:node, node} (or node: node) or " <>
               "{:tags, [atom, ...]} (or tags: [...]), got: {:tags, []}"},
            {[call_timeout: 0],
             "expected :call_timeout to be a positive integer or :infinity, got: 0"},
            {[python_path: "x"],
             "expected :python_path to be a list of directories: absolute paths, paths " <>
               "relative to the :otp_app's directory, {:priv, dir} or {:priv, app, dir}, " <>
               "got: \"x\""},
            {[otp_app: "app"],
             "expected :otp_app to be an application name (an atom), got: \"app\""},
            {[session_store: [max_sessions: 0]],
             "expected :max_sessions to be a positive integer, got: 0"},
            {[session_store: [strict_mode: :yes]],
             "expected :strict_mode to be a boolean, got: :yes"},
            {[threads: 1.5], "expected :threads to be a positive integer, got: 1.5"},
            {[spin_us: -1],
             "expected :spin_us to be an integer from 0 to 1_000_000 (microseconds), got: -1"},
            {[name: "ml"],
             "expected :name to be an atom (a Snakeport instance name), got: \"ml\""},
            {[session_store: [default_max_refs: 0]],
             "expected :default_max_refs to be a positive integer, got: 0"}
          ] do
        assert_raise ArgumentError, message, fn ->
          Snakeport.start_link([python: python()] ++ opts)
        end
      end

      assert_raise ArgumentError, ~r/unknown keys \[:pool\]/, fn ->
        Snakeport.start_link(pool: 1)
      end
    end

    test "application env supplies defaults, start options override them" do
      Application.put_env(:snakeport, :pool_size, 3)
      Application.put_env(:snakeport, :session_store, max_sessions: 7)

      on_exit(fn ->
        Enum.each([:pool_size, :session_store], &Application.delete_env(:snakeport, &1))
      end)

      config = Snakeport.Options.validate!(session_store: [strict_mode: true])
      assert config.pool_size == 3

      assert config.session_store == %{
               default_ttl: 3600,
               default_max_refs: 10_000,
               max_sessions: 7,
               cleanup_interval: 60_000,
               strict_mode: true,
               default_overflow: :error
             }

      assert Snakeport.Options.validate!(pool_size: 1).pool_size == 1
    end

    test "worker options become worker flags: the session defaults always, the others when set" do
      config =
        Snakeport.Options.validate!(
          threads: 2,
          spin_us: 0,
          session_store: [default_max_refs: 50, default_ttl: 60],
          worker_args: ["--max-depth", "9"]
        )

      assert Snakeport.Options.worker_flags(config) ==
               ["--default-max-refs", "50", "--default-ttl-seconds", "60"] ++
                 ["--default-overflow", "error", "--tool-timeout", "30"] ++
                 [
                   "--threads",
                   "2",
                   "--spin-us",
                   "0",
                   "--vm-pid",
                   System.pid(),
                   "--forward-logs",
                   "INFO"
                 ] ++
                 ["--max-depth", "9"]

      assert Snakeport.Options.worker_flags(Snakeport.Options.validate!([])) ==
               ["--default-max-refs", "10000", "--default-ttl-seconds", "3600"] ++
                 ["--default-overflow", "error", "--tool-timeout", "30"] ++
                 ["--vm-pid", System.pid(), "--forward-logs", "INFO"]

      # Python's output to Logger: at the level given, or not at all.
      assert ["--forward-logs", "ERROR"] ==
               Snakeport.Options.validate!(python_log_level: :error)
               |> Snakeport.Options.worker_flags()
               |> Enum.take(-2)

      refute "--forward-logs" in Snakeport.Options.worker_flags(
               Snakeport.Options.validate!(python_log_level: :none)
             )

      config =
        Snakeport.Options.validate!(
          session_store: [default_overflow: :evict_lru],
          tool_timeout: 1_500
        )

      assert ["--default-max-refs", "10000", "--default-ttl-seconds", "3600"] ++
               ["--default-overflow", "evict_lru", "--tool-timeout", "1.5"] ++
               ["--vm-pid", System.pid(), "--forward-logs", "INFO"] ==
               Snakeport.Options.worker_flags(config)
    end

    test "session context options are validated" do
      assert_raise ArgumentError, "expected :ttl_seconds to be a positive integer, got: 0", fn ->
        SessionContext.create(ttl_seconds: 0)
      end

      assert_raise ArgumentError, "expected :tags to be a map, got: [:a]", fn ->
        SessionContext.create(tags: [:a])
      end

      assert_raise ArgumentError,
                   "expected :instance to be an atom (a Snakeport instance name), got: \"x\"",
                   fn -> SessionContext.create(instance: "x") end
    end
  end

  describe "a worker that cannot start fails with a message saying what to do" do
    test "no Python interpreter" do
      log =
        capture_log(fn ->
          assert {:error, %Error{reason: :worker_start_failed, message: message}} =
                   Snakeport.start_link(python: "/nonexistent/bin/python3")

          assert message =~ "no Python interpreter found at \"/nonexistent/bin/python3\""
          assert message =~ "SNAKEPORT_PYTHON"
        end)

      assert log =~ "no Python interpreter"
    end

    test "the worker package is not installed in the interpreter" do
      # The virtualenv's base interpreter runs without the virtualenv, hence without snakeport.
      {base, 0} = System.cmd(python(), ["-c", "import sys; print(sys._base_executable)"])
      base = String.trim(base)

      case System.cmd(base, ["-c", "import snakeport"], stderr_to_stdout: true) do
        {_, 0} ->
          # This machine's base interpreter has snakeport too: nothing to test here.
          :ok

        {_, _} ->
          capture_log(fn ->
            assert {:error, %Error{reason: :worker_start_failed, message: message}} =
                     Snakeport.start_link(python: base)

            assert message =~ "the snakeport package is not installed in #{base}"
            assert message =~ "No module named"
            assert message =~ "run `mix snakeport.setup`"
          end)
      end
    end

    test "protocol version mismatch (the package speaks another version)" do
      capture_log(fn ->
        assert {:error, %Error{reason: :worker_start_failed, message: message, details: details}} =
                 Snakeport.start_link(
                   python: python(),
                   python_path: [Path.join(python_dir(), "fake_v99")]
                 )

        assert message =~ "protocol version mismatch"
        assert details.worker_protocol == 99
      end)
    end

    test "protocol version mismatch in the ready frame" do
      capture_log(fn ->
        # The worker fails in its init: start under the test supervisor (as a user's
        # supervisor would), which traps the start failure's exit.
        assert {:error, {%Error{reason: :worker_start_failed, message: message}, _}} =
                 start_supervised(
                   {Snakeport,
                    python: python(), python_path: [Path.join(python_dir(), "fake_bad_ready")]}
                 )

        assert message =~ "speaks protocol 1, the snakeport package"
        assert message =~ "speaks protocol 2"
      end)
    end

    test "no ready frame within the startup timeout" do
      capture_log(fn ->
        assert {:error, {%Error{reason: :worker_start_failed, message: message}, _}} =
                 start_supervised(
                   {Snakeport,
                    python: python(),
                    python_path: [Path.join(python_dir(), "fake_silent")],
                    startup_timeout: 300}
                 )

        assert message =~ "sent no ready frame within 300 ms"
      end)
    end
  end

  describe "the start path runs no probe of the interpreter" do
    # The package and its protocol version are learnt from the worker's ready frame; the
    # `python -c "import snakeport"` diagnosis runs only when a worker fails before it.
    # Each run of the interpreter is logged by a wrapper script.
    setup do
      dir = Path.join(System.tmp_dir!(), "snakeport-runs-#{System.unique_integer([:positive])}")
      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf!(dir) end)
      log = Path.join(dir, "runs.log")
      wrapper = Path.join(dir, "python")
      File.write!(wrapper, "#!/bin/sh\necho \"$1 $2\" >> #{log}\nexec #{python()} \"$@\"\n")
      File.chmod!(wrapper, 0o755)
      %{wrapper: wrapper, log: log}
    end

    test "a start that succeeds runs only the workers", %{wrapper: wrapper, log: log} do
      name = :"no_probe_#{System.unique_integer([:positive])}"

      start_supervised!(
        {Snakeport, Keyword.merge(base_opts(), name: name, python: wrapper, pool_size: 2)}
      )

      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: name)
      assert File.read!(log) == "-m snakeport\n-m snakeport\n"
    end

    test "a worker that exits before its ready frame is diagnosed", %{wrapper: wrapper, log: log} do
      capture_log(fn ->
        assert {:error, %Error{reason: :worker_start_failed, message: message}} =
                 Snakeport.start_link(
                   python: wrapper,
                   pool_size: 1,
                   python_path: [Path.join(python_dir(), "fake_v99")]
                 )

        assert message =~ "protocol version mismatch"
      end)

      # The worker, then its diagnosis (the worker's supervisor may have restarted it once
      # more, after its 100 ms backoff, before the failed instance stopped).
      assert [worker, "-c import sys, snakeport" <> _ | _] = File.read!(log) |> String.split("\n")
      assert worker == "-m snakeport"
    end

    test "a worker that fails for another reason keeps its own message" do
      capture_log(fn ->
        assert {:error, %Error{reason: :worker_start_failed, message: message}} =
                 Snakeport.start_link(base_opts() ++ [worker_args: ["--no-such-flag"]])

        assert message =~ "-m snakeport` exited with status 2 before its ready frame"
      end)
    end
  end

  describe "a caller that does not trap exits" do
    # A failed start of the instance also exits the linked caller (OTP's proc_lib): the
    # caller gets the error as a return value, not as a crash.
    test "gets the error of a worker that cannot start, and lives" do
      capture_log(fn ->
        assert {:error, %Error{reason: :worker_start_failed, message: message}} =
                 Snakeport.start_link(
                   python: python(),
                   python_path: [Path.join(python_dir(), "fake_silent")],
                   startup_timeout: 300
                 )

        assert message =~ "sent no ready frame within 300 ms"
      end)

      refute Process.flag(:trap_exit, false)
    end

    test "still dies of another linked process's exit that came while the instance started" do
      name = :"resignal_#{System.unique_integer([:positive])}"
      worker_sup = Snakeport.Instance.names(name).worker_supervisor

      capture_log(fn ->
        caller =
          spawn(fn ->
            # Exits with :boom once the instance's workers are starting (they never get ready).
            spawn_link(fn ->
              eventually(fn -> Process.whereis(worker_sup) end)
              exit(:boom)
            end)

            Snakeport.start_link(
              name: name,
              python: python(),
              python_path: [Path.join(python_dir(), "fake_silent")],
              startup_timeout: 1_000
            )

            exit(:survived)
          end)

        ref = Process.monitor(caller)
        assert_receive {:DOWN, ^ref, :process, ^caller, :boom}, 10_000
      end)
    end
  end

  describe "the workers' start" do
    # The handshakes run in the workers' own processes (handle_continue), so the worker
    # supervisor is up and answers while Python starts; the instance's start waits for all
    # of them, and fails with the first failure. Checked against workers that never send
    # their ready frame: before, the worker supervisor was blocked in the first worker's
    # init until its :startup_timeout passed.
    test "do not block the worker supervisor; the instance's start waits for them" do
      name = :"start_test_#{System.unique_integer([:positive])}"
      worker_sup = Snakeport.Instance.names(name).worker_supervisor
      parent = self()

      capture_log(fn ->
        spawn(fn ->
          Process.flag(:trap_exit, true)

          result =
            Snakeport.start_link(
              name: name,
              python: python(),
              pool_size: 3,
              python_path: [Path.join(python_dir(), "fake_silent")],
              startup_timeout: 3_000
            )

          send(parent, {:started, result})
        end)

        # Well before the startup timeout: the supervisor is there, every worker started.
        sup = eventually(fn -> Process.whereis(worker_sup) end, 1_500)
        children = Supervisor.which_children(sup)
        assert length(children) == 3
        assert Enum.all?(children, fn {_, pid, :worker, _} -> is_pid(pid) end)
        # ...and none is ready: the start has not returned.
        refute_received {:started, _}

        assert_receive {:started,
                        {:error, %Error{reason: :worker_start_failed, message: message}}},
                       10_000

        assert message =~ "sent no ready frame within 3000 ms"
        # The failed start left nothing running.
        assert Process.whereis(worker_sup) == nil
      end)
    end
  end

  test "the start returns after every worker's [:snakeport, :worker, :started] event" do
    # So that a handler attached once the instance is up sees only later workers' events
    # (tests that kill a worker and wait for its replacement's event rely on it). The
    # handler is slow, as a logging one may be: when the event came after the worker's
    # registration, the start returned before it.
    name = :"start_event_test_#{System.unique_integer([:positive])}"
    parent = self()
    id = {__MODULE__, make_ref()}

    :ok =
      Snakeport.Telemetry.attach(
        id,
        [:snakeport, :worker, :started],
        fn _, _, meta, _ ->
          if meta.instance == name do
            Process.sleep(50)
            send(parent, {:started, meta.worker})
          end
        end,
        nil
      )

    on_exit(fn -> Snakeport.Telemetry.detach(id) end)

    for _round <- 1..3 do
      pid = start_supervised!({Snakeport, Keyword.merge(base_opts(), name: name, pool_size: 4)})
      send(self(), :start_returned)

      events =
        for _ <- 1..5 do
          receive do
            {:started, worker} -> worker
            :start_returned -> :start_returned
          after
            5_000 -> flunk("missing events")
          end
        end

      assert events |> Enum.take(4) |> Enum.sort() == [0, 1, 2, 3]
      assert List.last(events) == :start_returned
      :ok = stop_supervised(name)
      refute Process.alive?(pid)
    end
  end

  test "calls before Snakeport is started return :not_started" do
    assert {:error, %Error{reason: :not_started}} = Snakeport.call("operator", "add", [1, 2])
    assert {:error, %Error{reason: :not_started}} = Snakeport.stats()

    assert {:error, %Error{reason: :not_started, message: message}} =
             Snakeport.call("operator", "add", [1, 2], instance: NotStarted)

    assert message =~ "NotStarted"
  end

  test "{Snakeport, opts} without :name is the instance Snakeport: existing code runs unchanged" do
    pid = start_supervised!({Snakeport, base_opts()})
    assert Process.whereis(Snakeport.Supervisor) == pid
    assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2])
    assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: Snakeport)
    assert {:ok, %Ref{instance: Snakeport} = ref} = Snakeport.call("collections", "Counter", [])
    assert {:ok, %{}} = Snakeport.call("builtins", "dict", [ref])

    assert {:ok, 3} =
             SessionContext.with_session(fn -> Snakeport.call("operator", "add", [1, 2]) end)

    assert {:ok, %{instance: Snakeport, sessions: 2}} = Snakeport.stats()
    assert {:error, {:already_started, ^pid}} = Snakeport.start_link(base_opts())
  end
end
