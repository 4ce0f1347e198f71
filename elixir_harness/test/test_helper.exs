# The harness tests drive the REAL Python worker (`python -m snakeport`) through real Ports.
# The interpreter: $SNAKEPORT_PYTHON, else the repository's virtualenv (../.venv relative to
# this Mix project), where the worker is installed.
project_root = Path.expand("..", __DIR__)

python =
  case System.get_env("SNAKEPORT_PYTHON") do
    p when is_binary(p) and p != "" -> p
    _ -> Path.expand("../.venv/bin/python", project_root)
  end

python = System.find_executable(python) || python

unless File.regular?(python) do
  raise """
  no Python interpreter for the harness tests at #{python}.
  Set SNAKEPORT_PYTHON to an interpreter where the snakeport worker is installed, or create the
  repository's virtualenv (`make venv` at the repository root).
  """
end

case System.cmd(python, ["-c", "import snakeport"], stderr_to_stdout: true) do
  {_, 0} ->
    :ok

  {out, _} ->
    raise """
    the snakeport worker is not importable by #{python}:
    #{out}
    Install it: #{python} -m pip install -e #{Path.expand("..", project_root)}
    """
end

Application.put_env(:snakeport_test, :python, python)
ExUnit.start(capture_log: true)
