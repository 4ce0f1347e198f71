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

# The cluster tests start peer nodes (:peer): this VM must be distributed. Name it here
# (short names), starting epmd first as `erl -sname` would, unless it runs with a name.
unless Node.alive?() do
  epmd = System.find_executable("epmd") || Path.join(:code.root_dir(), "bin/epmd")
  {_, 0} = System.cmd(epmd, ["-daemon"])
  name = :"snakeport_test_#{System.unique_integer([:positive])}_#{System.pid()}"

  case :net_kernel.start([name, :shortnames]) do
    {:ok, _} ->
      :ok

    {:error, reason} ->
      raise "cannot make the test VM distributed (#{inspect(reason)}): the cluster tests " <>
              "need epmd (#{epmd}) and a resolvable host name"
  end
end

ExUnit.start(capture_log: true)
