defmodule Snakeport.CmdTest do
  # Snakeport.Cmd runs the setup's and the doctor's commands: real OS processes.
  use ExUnit.Case, async: true

  import Snakeport.Case, only: [eventually: 1]

  alias Snakeport.Cmd

  test "exit status and output (stdout and stderr), line by line to :into" do
    parent = self()
    into = &send(parent, {:line, &1})

    assert {:ok, 3, "one\ntwo\nno newline"} =
             Cmd.run("sh", ["-c", "echo one; echo two 1>&2; printf 'no newline'; exit 3"],
               timeout: 10_000,
               into: into
             )

    assert_received {:line, "one\n"}
    assert_received {:line, "two\n"}
    assert_received {:line, "no newline"}
  end

  test "bytes that are not UTF-8 are read as Latin-1, so that lines can be printed" do
    assert {:ok, 0, out} = Cmd.run("sh", ["-c", "printf 'caf\\351\\n'"], timeout: 10_000)
    assert out == "café\n"
  end

  test ":env sets and unsets variables, :cd sets the directory" do
    System.put_env("SNAKEPORT_CMD_TEST_UNSET", "set")
    on_exit(fn -> System.delete_env("SNAKEPORT_CMD_TEST_UNSET") end)

    assert {:ok, 0, "/ x -\n"} =
             Cmd.run("sh", ["-c", "echo \"$(pwd) $A ${SNAKEPORT_CMD_TEST_UNSET:--}\""],
               timeout: 10_000,
               cd: "/",
               env: [{"A", "x"}, {"SNAKEPORT_CMD_TEST_UNSET", nil}]
             )
  end

  test "a program that does not exist is an error" do
    assert {:error, "/nonexistent/prog: no such program"} =
             Cmd.run("/nonexistent/prog", [], timeout: 1_000)

    assert {:error, "snakeport-no-such-prog: no such program"} =
             Cmd.run("snakeport-no-such-prog", [], timeout: 1_000)
  end

  test "past the deadline the process is killed and the error says so" do
    pidfile = Path.join(System.tmp_dir!(), "snakeport-cmd-#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(pidfile) end)

    assert {:error, message} =
             Cmd.run("sh", ["-c", "echo $$ > #{pidfile}; exec sleep 60"], timeout: 500)

    assert message =~ "did not finish within 500 ms and was killed"
    pid = pidfile |> File.read!() |> String.trim()
    # Gone (not merely detached): kill -0 fails once the kernel reaped it.
    eventually(fn -> match?({_, 1}, System.cmd("kill", ["-0", pid], stderr_to_stdout: true)) end)
  end
end
