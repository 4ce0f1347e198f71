defmodule Snakeport.SetupTest do
  # What `mix snakeport.setup` does, run for real: virtualenvs made with venv or uv, the
  # worker and deps installed with pip or uv (from PyPI), instances started on the result,
  # and the errors that name their fix. Makes its virtualenvs in a temporary directory.
  use Snakeport.Case, async: false

  alias Snakeport.{PythonEnv, Setup}

  @moduletag snakeport: false
  @moduletag timeout: 300_000

  setup do
    dir = Path.join(System.tmp_dir!(), "snakeport-setup-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    {:ok, tmp: dir}
  end

  # The test interpreter's base interpreter (the one its virtualenv was made from).
  defp base_python do
    {out, 0} = System.cmd(python(), ["-c", "import sys; print(sys._base_executable)"])
    String.trim(out)
  end

  defp env(tmp, overrides) do
    Map.merge(
      %{
        venv: Path.join(tmp, "venv"),
        base_python: base_python(),
        deps: {:list, []},
        installer: :pip,
        tools: Path.join(tmp, "tools"),
        timeout: 240_000
      },
      Map.new(overrides)
    )
  end

  defp run(env, opts \\ []) do
    parent = self()
    log = fn line -> send(parent, {:log, line}) end
    Setup.run(env, [log: log, warn: log] ++ opts)
  end

  defp logs do
    receive do
      {:log, line} -> [line | logs()]
    after
      0 -> []
    end
  end

  # A base interpreter without venv support, as Debian's python3 without python3-venv:
  # the real interpreter, with an `ensurepip` that cannot be imported first on its path.
  defp python_without_ensurepip(tmp) do
    shadow = Path.join(tmp, "no_ensurepip")
    File.mkdir_p!(shadow)

    File.write!(
      Path.join(shadow, "ensurepip.py"),
      "raise ModuleNotFoundError(\"No module named 'ensurepip'\")\n"
    )

    wrapper = Path.join(tmp, "python3-no-venv")
    File.write!(wrapper, "#!/bin/sh\nPYTHONPATH=#{shadow} exec #{base_python()} \"$@\"\n")
    File.chmod!(wrapper, 0o755)
    {_, 1} = System.cmd(wrapper, ["-c", "import ensurepip"], stderr_to_stdout: true)
    wrapper
  end

  test "no Python: the error says how to install one", %{tmp: tmp} do
    assert {:error, message} = run(env(tmp, base_python: "/nonexistent/python3"))
    assert message =~ "no Python interpreter found at \"/nonexistent/python3\""
    assert message =~ "sudo apt-get install python3 python3-venv"
    assert message =~ "base_python"
    refute File.exists?(Path.join(tmp, "venv"))
  end

  test "no venv support and no uv: the error names python3-venv and uv", %{tmp: tmp} do
    env = env(tmp, base_python: python_without_ensurepip(tmp), installer: :pip)
    assert {:error, message} = run(env)
    assert message =~ "Python's venv support is missing"
    assert message =~ "sudo apt-get install python3-venv"
    assert message =~ "put uv on PATH"
    refute File.exists?(env.venv)
  end

  test "a directory that is not a virtualenv is left alone", %{tmp: tmp} do
    env = env(tmp, [])
    File.mkdir_p!(env.venv)
    File.write!(Path.join(env.venv, "precious.txt"), "mine")
    assert {:error, message} = run(env)
    assert message =~ "is not a virtualenv (no pyvenv.cfg): not touching it"
    assert File.read!(Path.join(env.venv, "precious.txt")) == "mine"
  end

  test "pip: makes the virtualenv and installs the worker; an instance runs there; " <>
         "a second run does nothing; changed deps install in place",
       %{tmp: tmp} do
    req = Path.join(tmp, "requirements.txt")
    File.write!(req, "# nothing yet\n")
    env = env(tmp, deps: {:requirements, req}, installer: :pip)

    assert {:ok, %{status: :installed, python: venv_python, c_accelerator: true}} = run(env)
    log = logs()
    assert Enum.any?(log, &(&1 =~ "creating the virtualenv #{env.venv} from"))

    assert Enum.any?(
             log,
             &(&1 =~ "installing the snakeport worker #{PythonEnv.worker_version()}")
           )

    assert Enum.any?(log, &(&1 =~ "with pip"))
    assert venv_python == PythonEnv.python_in(env.venv)
    assert PythonEnv.read_stamp(env.venv)["installer"] == "pip"

    # The worker is a regular install (not a link to the harness's sources).
    {file, 0} = System.cmd(venv_python, ["-c", "import snakeport; print(snakeport.__file__)"])
    assert String.starts_with?(file, env.venv)

    # A second instance on this virtualenv, beside any other.
    start_supervised!({Snakeport, name: __MODULE__.PipVenv, python: venv_python, pool_size: 1})
    assert {:ok, prefix} = Snakeport.get_attr("sys", "prefix", instance: __MODULE__.PipVenv)
    assert Path.expand(prefix) == env.venv
    assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: __MODULE__.PipVenv)

    # Nothing changed: nothing runs.
    marker = Path.join(env.venv, "marker")
    File.write!(marker, "")
    assert {:ok, %{status: :up_to_date}} = run(env)
    assert [line] = logs()
    assert line =~ "is up to date"

    # The deps changed: installed into the same virtualenv (the marker stays).
    File.write!(req, "# still nothing, but another file\n")
    assert {:ok, %{status: :installed}} = run(env)
    refute Enum.any?(logs(), &(&1 =~ "creating the virtualenv"))
    assert File.exists?(marker)
    assert {:ok, %{status: :up_to_date}} = run(env)
  end

  test "uv: installed from PyPI when not on PATH, then makes virtualenvs without venv support",
       %{tmp: tmp} do
    # uv must not be on PATH for this test: hide any.
    path = System.get_env("PATH")
    on_exit(fn -> System.put_env("PATH", path) end)

    System.put_env(
      "PATH",
      path
      |> String.split(":")
      |> Enum.reject(&File.exists?(Path.join(&1, "uv")))
      |> Enum.join(":")
    )

    first = env(tmp, venv: Path.join(tmp, "venv1"), installer: :uv)
    assert {:ok, %{status: :installed, c_accelerator: true}} = run(first)
    log = logs()

    assert Enum.any?(
             log,
             &(&1 =~ "uv is not on PATH: installing it from PyPI into #{first.tools}/uv")
           )

    assert Enum.any?(log, &(&1 =~ "with uv (#{first.tools}/uv/bin/uv)"))
    assert PythonEnv.read_stamp(first.venv)["installer"] =~ "uv"

    # uv, once there, makes the next virtualenv itself: no ensurepip needed.
    second =
      env(tmp,
        venv: Path.join(tmp, "venv2"),
        installer: :auto,
        base_python: python_without_ensurepip(tmp)
      )

    assert {:ok, %{status: :installed, python: python2}} = run(second)
    log = logs()
    assert Enum.any?(log, &(&1 =~ "creating the virtualenv #{second.venv} with uv"))
    refute Enum.any?(log, &(&1 =~ "installing it from PyPI"))
    {out, 0} = System.cmd(python2, ["-c", "import snakeport._cetf, sys; print(sys.prefix)"])
    assert String.trim(out) == second.venv
  end
end
