defmodule Snakeport.PythonLogsTest do
  # Python's output in Elixir's Logger, against the real worker: logging records, warnings,
  # print(), fd 2 written by C code, a child process; metadata; the level option; bounded.
  use Snakeport.Case, async: true

  import ExUnit.CaptureLog

  alias Snakeport.LogCatcher

  @mod "snakeport_harness_testmod"

  # Runs `fun` (which makes Python write something containing `marker`), then waits until a
  # log event holding `marker` went through Logger (the worker logs, then emits the event).
  # The log captured while `fun` runs and until a log event containing each of `markers`
  # (a string or a list: lines from fds 1 and 2 come through separate pipes) has arrived.
  defp logged(markers, fun) do
    capture_events([[:snakeport, :worker, :log]], @instance)

    capture_log(fn ->
      fun.()
      wait_for(List.wrap(markers))
    end)
  end

  defp wait_for([]), do: :ok

  defp wait_for(markers) do
    receive do
      {:event, [:snakeport, :worker, :log], _, %{message: message}} ->
        wait_for(Enum.reject(markers, &String.contains?(message, &1)))
    after
      5_000 -> flunk("no log event with #{inspect(markers)}")
    end
  end

  test "logging records, at their level, with the logger's name" do
    log =
      logged("hello from logging", fn ->
        assert {:ok, "logged"} =
                 Snakeport.call(@mod, "log", [30, "hello from logging"], instance: @instance)
      end)

    assert log =~ "[warning]"
    assert log =~ "[python:myapp.model] hello from logging"
  end

  test "logging metadata: instance, worker, OS pid, session, request id, logger" do
    LogCatcher.attach(@instance)
    ctx = SessionContext.create(instance: @instance)
    assert {:ok, "logged"} = Snakeport.call(@mod, "log", [40, "with metadata"], session: ctx)
    assert_receive {:log, :error, "[python:myapp.model] with metadata", meta}, 5_000
    [worker] = workers(@instance)
    assert meta[:instance] == @instance
    assert meta[:worker] == 0 and meta[:os_pid] == worker.os_pid
    assert meta[:session_id] == ctx.session_id
    assert is_integer(meta[:python_request_id])
    assert meta[:python_logger] == "myapp.model" and meta[:python_source] == :logging
  end

  test "an exception's traceback is part of the record" do
    log =
      logged("it failed", fn ->
        Snakeport.call(@mod, "log_exception", ["it failed"], instance: @instance)
      end)

    assert log =~ "[error]" and log =~ "it failed" and log =~ "KeyError: 'inner'"
  end

  test "warnings" do
    log =
      logged("mind the gap", fn ->
        assert {:ok, "warned"} =
                 Snakeport.call(@mod, "warn", ["mind the gap"], instance: @instance)
      end)

    assert log =~ "[warning]" and log =~ "[python:warnings]" and
             log =~ "UserWarning: mind the gap"
  end

  test "print()" do
    log =
      logged("printed line", fn ->
        assert {:ok, _} = Snakeport.call(@mod, "say", ["printed line"], instance: @instance)
      end)

    assert log =~ "[info]" and log =~ "[python:stdout] printed line"
  end

  test "fd 2 written by C code (libc write through ctypes)" do
    log =
      logged("from C", fn ->
        assert {:ok, 7} = Snakeport.call(@mod, "c_write", [2, "from C\n"], instance: @instance)
      end)

    assert log =~ "[warning]" and log =~ "[python:stderr] from C"
  end

  test "a child process's stdout and stderr" do
    LogCatcher.attach(@instance)
    assert {:ok, _} = Snakeport.call(@mod, "child", ["kid"], instance: @instance)
    assert_receive {:log, :info, "[python:stdout] kid out", %{python_source: :stdout}}, 5_000
    assert_receive {:log, :warning, "[python:stderr] kid err", %{python_source: :stderr}}, 5_000

    log =
      logged(["kid again out", "kid again err"], fn ->
        Snakeport.call(@mod, "child", ["kid again"], instance: @instance)
      end)

    assert log =~ "kid again out" and log =~ "kid again err"
  end

  test "a flood is cut by the rate limit, and the dropped lines are counted" do
    LogCatcher.attach(@instance)
    capture_events([[:snakeport, :worker, :log]], @instance)

    capture_log(fn ->
      assert {:ok, 20_000} = Snakeport.call(@mod, "print_many", [20_000], instance: @instance)
      assert_receive {:event, _, %{dropped: dropped}, _}, 10_000
      assert dropped > 0 and dropped < 20_000
      assert_receive {:log, :warning, message, %{dropped: ^dropped}}, 5_000
      assert message =~ "#{dropped} lines of Python output were dropped"
    end)

    # No more than the worker's burst (2,000) and its rate (1,000 lines a second) let through.
    lines = count_lines(0)
    assert lines < 2_000 + 1_000 * 10
  end

  defp count_lines(n) do
    receive do
      {:log, _, "[python:stdout] spam" <> _, _} -> count_lines(n + 1)
    after
      200 -> n
    end
  end

  @tag snakeport: [python_log_level: :warning]
  test "python_log_level: below it nothing is forwarded" do
    LogCatcher.attach(@instance)
    assert {:ok, _} = Snakeport.call(@mod, "say", ["quiet line"], instance: @instance)
    assert {:ok, _} = Snakeport.call(@mod, "log", [20, "quiet record"], instance: @instance)
    assert {:ok, _} = Snakeport.call(@mod, "log", [30, "loud record"], instance: @instance)
    assert_receive {:log, :warning, "[python:myapp.model] loud record", _}, 5_000
    refute_received {:log, _, "[python:stdout] quiet line", _}
    refute_received {:log, _, "[python:myapp.model] quiet record", _}
  end

  @tag snakeport: [python_log_level: :none]
  test "python_log_level: :none leaves Python's output alone (on stderr)" do
    LogCatcher.attach(@instance)
    assert {:ok, _} = Snakeport.call(@mod, "log", [40, "not forwarded"], instance: @instance)
    # Ordered after the record: a ping through the same worker.
    assert {:ok, _} = Snakeport.stats(instance: @instance)
    refute_received {:log, _, _, _}
  end

  test "an invalid python_log_level is refused" do
    assert_raise ArgumentError, ~r/expected :python_log_level to be :debug, :info/, fn ->
      Snakeport.start_link(name: __MODULE__.Bad, python_log_level: :loud)
    end
  end
end
