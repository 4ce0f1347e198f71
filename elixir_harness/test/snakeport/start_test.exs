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
            {[pool_size: -1], "expected :pool_size to be a positive integer, got: -1"},
            {[call_timeout: 0],
             "expected :call_timeout to be a positive integer or :infinity, got: 0"},
            {[python_path: "x"],
             "expected :python_path to be a list of directories (strings), got: \"x\""},
            {[session_store: [max_sessions: 0]],
             "expected :max_sessions to be a positive integer, got: 0"},
            {[session_store: [strict_mode: :yes]],
             "expected :strict_mode to be a boolean, got: :yes"},
            {[threads: 1.5], "expected :threads to be a positive integer, got: 1.5"},
            {[spin_us: -1],
             "expected :spin_us to be an integer from 0 to 1_000_000 (microseconds), got: -1"}
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
               max_sessions: 7,
               cleanup_interval: 60_000,
               strict_mode: true
             }

      assert Snakeport.Options.validate!(pool_size: 1).pool_size == 1
    end

    test "worker options become worker flags; unset ones keep the worker's defaults" do
      config =
        Snakeport.Options.validate!(threads: 2, spin_us: 0, worker_args: ["--max-depth", "9"])

      assert Snakeport.Options.worker_flags(config) ==
               ["--threads", "2", "--spin-us", "0", "--max-depth", "9"]

      assert Snakeport.Options.worker_flags(Snakeport.Options.validate!([])) == []
    end

    test "session context options are validated" do
      assert_raise ArgumentError, "expected :ttl_seconds to be a positive integer, got: 0", fn ->
        SessionContext.create(ttl_seconds: 0)
      end

      assert_raise ArgumentError, "expected :tags to be a map, got: [:a]", fn ->
        SessionContext.create(tags: [:a])
      end
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
            assert message =~ "-m pip install"
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

  test "calls before Snakeport is started return :not_started" do
    assert {:error, %Error{reason: :not_started}} = Snakeport.call("operator", "add", [1, 2])
    assert {:error, %Error{reason: :not_started}} = Snakeport.stats()
  end

  test "{Snakeport, opts} starts under a supervisor, one instance with fixed names" do
    pid = start_supervised!({Snakeport, base_opts()})
    assert Process.whereis(Snakeport.Supervisor) == pid
    assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2])
    assert {:error, {:already_started, ^pid}} = Snakeport.start_link(base_opts())
  end
end
