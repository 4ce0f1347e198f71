defmodule Snakeport.Doctor do
  @moduledoc false
  # What `mix snakeport.doctor` checks (no Mix needed): the options of the default instance
  # (:python_path directories), the interpreter the instances would use and its version,
  # the worker in it against this harness's protocol, the codec's C accelerator, each
  # declared dep (installed and importable), and whether the managed virtualenv is up to
  # date with the config. Each check is %{check, status, detail, fix}; `fix` says what to
  # do when the status is :fail.

  alias Snakeport.{Cmd, Defaults, Options, Protocol, PythonEnv, Setup}

  @type check :: %{check: String.t(), status: :ok | :fail, detail: String.t(), fix: String.t()}

  @setup "run `mix snakeport.setup`"

  # One line per finding, tab-separated, on stdout; imports every declared dep's top-level
  # modules (found with importlib.metadata), guarded against anything they raise.
  @probe """
  import importlib, re, sys
  import importlib.metadata as md

  def out(*fields):
      print("\\t".join(" ".join(str(f).split()) for f in fields), flush=True)

  def err(e):
      return "%s: %s" % (type(e).__name__, e)

  out("python", "%d.%d.%d" % sys.version_info[:3], sys.prefix)
  try:
      import snakeport
      out("worker", "ok", getattr(snakeport, "__version__", "?"),
          getattr(snakeport, "PROTOCOL_VERSION", "?"), snakeport.__file__)
  except BaseException as e:
      out("worker", "error", err(e))
  try:
      import snakeport._cetf
      out("cetf", "ok")
  except BaseException as e:
      out("cetf", "error", err(e))

  def norm(name):
      return re.sub(r"[-_.]+", "-", name).lower()

  try:
      modules = {}
      for module, dists in md.packages_distributions().items():
          for dist in dists:
              modules.setdefault(norm(dist), set()).add(module)
  except BaseException:
      modules = {}

  for name in sys.argv[1:]:
      try:
          version = md.version(name)
      except BaseException:
          out("dep", name, "missing")
          continue
      tops = sorted(m for m in modules.get(norm(name), ())
                    if m.isidentifier() and not m.startswith("_"))
      failed = None
      for module in tops:
          try:
              importlib.import_module(module)
          except BaseException as e:
              failed = "import %s: %s" % (module, err(e))
              break
      if failed:
          out("dep", name, "error", version, failed)
      else:
          out("dep", name, "ok", version, ",".join(tops))
  """

  @doc false
  # Runs every check. `python` overrides the interpreter (`--venv`); `env` is the managed
  # environment's config (Snakeport.PythonEnv.config/1).
  @spec run(PythonEnv.t(), String.t() | nil) :: [check()]
  def run(env, python \\ nil) do
    options = options_check()

    {python, source} = if python, do: {python, :flag}, else: Options.python_choice([])

    case find(python) do
      nil ->
        [
          options,
          fail(
            "interpreter",
            "no Python interpreter at #{inspect(python)} (#{source_text(source)})",
            interpreter_fix(source)
          )
        ]

      exe ->
        [options | probe_checks(exe, source, env)] ++ stamp_checks(exe, env)
    end
  end

  defp options_check do
    Options.validate!([])

    ok(
      "options",
      "the options of the default instance are valid (:python_path directories exist)"
    )
  rescue
    e in ArgumentError ->
      fail("options", Exception.message(e), "fix `config :snakeport, ...` (see the message)")
  end

  defp find(python) do
    if String.contains?(python, "/") do
      path = Path.expand(python)
      if File.regular?(path), do: path
    else
      System.find_executable(python)
    end
  end

  defp source_text(:flag), do: "--venv"
  defp source_text(source), do: "chosen by " <> Options.describe_source(source)

  defp interpreter_fix(source) when source in [:venv, :default, :flag], do: @setup

  defp interpreter_fix(source) do
    "#{Options.describe_source(source)} names it: correct or remove that setting (without " <>
      "it, the instances use the managed virtualenv of `mix snakeport.setup`)"
  end

  defp worker_fix(python, source) when source in [:venv, :default, :flag],
    do: "#{@setup} (it installs the worker this harness carries into #{python})"

  defp worker_fix(python, source) do
    "#{python} is #{Options.describe_source(source)}: #{@setup} and remove that setting, " <>
      "or install the worker into it"
  end

  defp probe_checks(python, source, env) do
    deps =
      case PythonEnv.requirements(env.deps, python) do
        {:ok, reqs} -> Enum.map(reqs, &{&1, PythonEnv.requirement_name(&1)})
        {:error, message} -> {:error, message}
      end

    names = if is_list(deps), do: for({_, name} <- deps, name != nil, do: name), else: []

    case Cmd.run(python, ["-c", @probe | names], timeout: Defaults.probe_timeout()) do
      {:ok, 0, out} ->
        rows = for line <- String.split(out, "\n", trim: true), do: String.split(line, "\t")
        interpreter(python, source, rows) ++ worker(python, source, rows) ++ deps(deps, rows)

      {:ok, status, out} ->
        [
          fail(
            "interpreter",
            "#{python} (#{source_text(source)}) failed with status #{status}: " <>
              String.slice(String.trim(out), 0, 2000),
            interpreter_fix(source)
          )
        ]

      {:error, message} ->
        [fail("interpreter", message, interpreter_fix(source))]
    end
  end

  defp interpreter(python, source, rows) do
    [version | _] = row(rows, "python") || ["?"]

    ok? =
      case String.split(version, ".") do
        [major, minor | _] -> {String.to_integer(major), String.to_integer(minor)} >= {3, 10}
        _ -> false
      end

    detail = "#{python} (Python #{version}, #{source_text(source)})"

    if ok? do
      [ok("interpreter", detail)]
    else
      [
        fail(
          "interpreter",
          detail <> ": the worker needs Python >= 3.10",
          interpreter_fix(source)
        )
      ]
    end
  end

  defp worker(python, source, rows) do
    worker =
      case row(rows, "worker") do
        ["ok", version, protocol | _] ->
          if protocol == Integer.to_string(Protocol.version()) do
            ok(
              "worker",
              "snakeport #{version}, protocol #{protocol} (the harness speaks #{protocol})"
            )
          else
            fail(
              "worker",
              "snakeport #{version} speaks protocol #{protocol}, this harness " <>
                "#{Protocol.version()}",
              worker_fix(python, source)
            )
          end

        ["error", message | _] ->
          fail("worker", "import snakeport: #{message}", worker_fix(python, source))

        _ ->
          fail("worker", "no answer from the probe", worker_fix(python, source))
      end

    cetf =
      case row(rows, "cetf") do
        ["ok" | _] ->
          ok("C accelerator", "snakeport._cetf imports")

        _ when worker.status == :fail ->
          fail("C accelerator", "not checked: the worker does not import", worker.fix)

        ["error", message | _] ->
          if Setup.pure_python?() do
            ok(
              "C accelerator",
              "not built (#{message}); SNAKEPORT_PURE_PYTHON asks for the pure-Python codec"
            )
          else
            fail(
              "C accelerator",
              "import snakeport._cetf: #{message} (the worker runs its slower pure-Python codec)",
              "install a C compiler and the Python headers (Debian/Ubuntu: `sudo apt-get " <>
                "install gcc python3-dev`), then run `mix snakeport.setup --force`; or set " <>
                "SNAKEPORT_PURE_PYTHON=1 to accept the pure-Python codec"
            )
          end
      end

    [worker, cetf]
  end

  defp deps({:error, message}, _rows),
    do: [fail("deps", message, "fix :python_deps")]

  defp deps(deps, rows) do
    found = for ["dep", name | rest] <- rows, into: %{}, do: {name, rest}

    Enum.map(deps, fn
      {req, nil} ->
        ok("dep #{req}", "not a named requirement: installed by setup, not checked here")

      {req, name} ->
        case found[name] do
          ["ok", version, modules | _] ->
            ok("dep #{req}", "#{name} #{version}#{imports(modules)}")

          ["ok", version] ->
            ok("dep #{req}", "#{name} #{version}")

          ["error", version, message | _] ->
            fail(
              "dep #{req}",
              "#{name} #{version} is installed but #{message}",
              @setup <> " --force"
            )

          _ ->
            fail("dep #{req}", "#{name} is not installed", @setup)
        end
    end)
  end

  defp imports(""), do: ""
  defp imports(modules), do: ", imports " <> String.replace(modules, ",", ", ")

  defp row(rows, key),
    do:
      Enum.find_value(rows, fn
        [^key | rest] -> rest
        _ -> nil
      end)

  # The managed virtualenv (the interpreter in use is its python) against the config.
  defp stamp_checks(python, env) do
    if Path.expand(python) == Path.expand(PythonEnv.python_in(env.venv)) do
      stamp = PythonEnv.read_stamp(env.venv)

      case Setup.plan(env) do
        {:ok, plan} ->
          cond do
            stamp == %{} ->
              [
                fail(
                  "setup",
                  "#{env.venv} has no setup stamp: it was not made by `mix snakeport.setup`",
                  @setup
                )
              ]

            stamp["hash"] == plan.fingerprint ->
              [ok("setup", "#{env.venv} is up to date with the config and the worker")]

            true ->
              [
                fail(
                  "setup",
                  "#{env.venv} is out of date: #{changed(stamp, plan)} since the last setup",
                  @setup
                )
              ]
          end

        {:error, message} ->
          [fail("setup", message, "fix the base interpreter (config :snakeport, base_python:)")]
      end
    else
      []
    end
  end

  defp changed(stamp, plan) do
    [
      stamp["python"] != plan.info.id && "the base interpreter",
      stamp["worker_hash"] != plan.worker_hash && "the worker",
      "the :python_deps"
    ]
    |> Enum.find(& &1)
    |> Kernel.<>(" changed")
  end

  defp ok(check, detail), do: %{check: check, status: :ok, detail: detail, fix: ""}
  defp fail(check, detail, fix), do: %{check: check, status: :fail, detail: detail, fix: fix}
end
