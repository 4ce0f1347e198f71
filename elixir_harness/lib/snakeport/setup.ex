defmodule Snakeport.Setup do
  @moduledoc false
  # What `mix snakeport.setup` does (no Mix needed): makes the managed virtualenv of a
  # Snakeport.PythonEnv config and installs into it the worker this harness carries and
  # the app's :python_deps, with uv when it is on PATH (or once installed from PyPI into
  # <build root>/snakeport/tools), else with pip. A stamp in the virtualenv records the
  # fingerprint of what was installed (base interpreter, deps, worker sources, protocol);
  # a run whose fingerprint matches does nothing. The worker is built from a temporary
  # copy of its sources, so that no build output lands in the harness or the repository.
  #
  # Steps, each reported through `:log`:
  #   1. the base interpreter: found, >= 3.10 (else an error naming the fix);
  #   2. the fingerprint; up to date -> done;
  #   3. the virtualenv: kept when only the deps or the worker changed, made anew when the
  #      interpreter changed, it is broken, or `force: true` (`uv venv`, or `python -m venv`,
  #      whose missing ensurepip is an error naming python3-venv and uv);
  #   4. the installer: uv (PATH, tools dir, or pip-installed into the tools dir), else pip;
  #   5. one install of the worker and the deps together; a check that the worker imports
  #      and speaks our protocol (and whether its C accelerator was built); the stamp.

  alias Snakeport.{Cmd, Protocol, PythonEnv}

  @min_python {3, 10}

  @type opts :: [
          force: boolean(),
          log: (String.t() -> any()),
          warn: (String.t() -> any()),
          into: (binary() -> any()) | nil
        ]

  @doc false
  # Returns {:ok, %{status: :installed | :up_to_date, python: venv_python, ...}} or
  # {:error, message}; the message says what to do.
  @spec run(PythonEnv.t(), opts()) :: {:ok, map()} | {:error, String.t()}
  def run(env, opts \\ []) do
    opts = Keyword.merge([force: false, log: fn _ -> :ok end, into: nil], opts)
    opts = Keyword.put_new(opts, :warn, opts[:log])
    started = System.monotonic_time(:millisecond)

    with {:ok, plan} <- plan(env) do
      venv_python = PythonEnv.python_in(env.venv)
      stamp = PythonEnv.read_stamp(env.venv)

      summary = %{
        python: venv_python,
        venv: env.venv,
        base_python: plan.base,
        python_version: plan.info.version,
        worker_version: PythonEnv.worker_version(),
        requirements: plan.reqs
      }

      if not opts[:force] and stamp["hash"] == plan.fingerprint and runs?(venv_python, env) do
        opts[:log].(
          "#{env.venv} is up to date (Python #{plan.info.version}, worker " <>
            "#{summary.worker_version}, #{deps_text(env.deps, plan.reqs)}): nothing to do"
        )

        {:ok, Map.put(summary, :status, :up_to_date)}
      else
        install(
          env,
          opts,
          Map.merge(plan, %{stamp: stamp, summary: summary, started: started})
        )
      end
    end
  end

  @doc false
  # What a setup of `env` installs from: the base interpreter (found, >= 3.10) and its
  # identity, the worker's source files and their hash, the requirement strings, and the
  # fingerprint the stamp records. {:ok, plan} | {:error, message}.
  @spec plan(PythonEnv.t()) :: {:ok, map()} | {:error, String.t()}
  def plan(env) do
    with {:ok, base} <- base_python(env.base_python),
         {:ok, info} <- python_info(base, env),
         :ok <- python_version_ok(base, info),
         files = PythonEnv.worker_files(),
         worker_hash = PythonEnv.worker_hash(files),
         {:ok, reqs} <- PythonEnv.requirements(env.deps, base) do
      {:ok,
       %{
         base: base,
         info: info,
         files: files,
         worker_hash: worker_hash,
         reqs: reqs,
         fingerprint: PythonEnv.fingerprint(info.id, env.deps, reqs, worker_hash)
       }}
    end
  end

  defp install(env, opts, ctx) do
    with :ok <- prepare_venv_dir(env, opts, ctx),
         {:ok, uv} <- create_venv(env, opts, ctx),
         {:ok, installer} <- installer(env, opts, uv),
         :ok <- install_packages(env, opts, ctx, installer),
         {:ok, cetf} <- check_worker(env, opts) do
      PythonEnv.write_stamp(env.venv, [
        {"hash", ctx.fingerprint},
        {"python", ctx.info.id},
        {"base_python", ctx.base},
        {"python_version", ctx.info.version},
        {"worker_version", ctx.summary.worker_version},
        {"worker_hash", ctx.worker_hash},
        {"deps", deps_text(env.deps, ctx.reqs)},
        {"installer", installer_text(installer)},
        {"c_accelerator", to_string(cetf)}
      ])

      secs = (System.monotonic_time(:millisecond) - ctx.started) / 1000

      opts[:log].(
        "ready in #{:erlang.float_to_binary(secs, decimals: 1)} s: #{ctx.summary.python} " <>
          "(Python #{ctx.info.version}, worker #{ctx.summary.worker_version}, " <>
          "C accelerator #{if cetf, do: "built", else: "missing"}, " <>
          "#{deps_text(env.deps, ctx.reqs)})"
      )

      {:ok, Map.merge(ctx.summary, %{status: :installed, c_accelerator: cetf})}
    end
  end

  ## The base interpreter -------------------------------------------------------------------

  @install_python "Install Python >= 3.10 (Debian/Ubuntu: `sudo apt-get install python3 " <>
                    "python3-venv`; macOS: `brew install python`) or point " <>
                    "`config :snakeport, base_python: \"/path/to/python3\"` at one"

  defp base_python(nil) do
    case System.find_executable("python3") || System.find_executable("python") do
      nil ->
        {:error,
         "no Python interpreter found: neither python3 nor python is on PATH. " <>
           @install_python <> "."}

      exe ->
        {:ok, exe}
    end
  end

  defp base_python(python) do
    found =
      if String.contains?(python, "/"),
        do: if(File.regular?(Path.expand(python)), do: Path.expand(python)),
        else: System.find_executable(python)

    if found,
      do: {:ok, found},
      else:
        {:error,
         "no Python interpreter found at #{inspect(python)} (config :snakeport, base_python:). " <>
           @install_python <> "."}
  end

  @info_probe """
  import os, sys
  print("version=%d.%d.%d" % sys.version_info[:3])
  print("executable=" + os.path.realpath(sys.executable))
  print("sys_version=" + " ".join(sys.version.split()))
  """

  @doc false
  # The interpreter's version and identity (its real executable and sys.version: what the
  # virtualenv depends on).
  @spec python_info(String.t(), PythonEnv.t() | map()) :: {:ok, map()} | {:error, String.t()}
  def python_info(python, env) do
    case Cmd.run(python, ["-c", @info_probe], timeout: timeout(env, 60_000)) do
      {:ok, 0, out} ->
        fields = parse_fields(out)

        with version when is_binary(version) <- fields["version"],
             [major, minor | _] <- String.split(version, ".") do
          {:ok,
           %{
             version: version,
             tuple: {String.to_integer(major), String.to_integer(minor)},
             id: "#{fields["executable"]} #{fields["sys_version"]}"
           }}
        else
          _ -> {:error, "#{python} does not look like a Python interpreter: #{String.trim(out)}"}
        end

      {:ok, status, out} ->
        {:error,
         "#{python} -c '...' exited with status #{status}: #{String.trim(out)}. " <>
           @install_python <> "."}

      {:error, message} ->
        {:error, message <> ". " <> @install_python <> "."}
    end
  end

  defp timeout(%{timeout: t}, cap), do: min(t, cap)
  defp timeout(_, cap), do: cap

  defp python_version_ok(python, %{tuple: tuple, version: version}) do
    if tuple >= @min_python do
      :ok
    else
      {:error,
       "#{python} is Python #{version}: the worker needs Python >= 3.10. " <>
         @install_python <> "."}
    end
  end

  defp parse_fields(out) do
    for line <- String.split(out, "\n", trim: true),
        [k, v] <- [String.split(line, "=", parts: 2)],
        into: %{},
        do: {k, String.trim(v)}
  end

  ## The virtualenv ------------------------------------------------------------------------

  defp runs?(python, env) do
    File.regular?(python) and
      match?(
        {:ok, 0, _},
        Cmd.run(python, ["-c", "import snakeport"], timeout: timeout(env, 60_000))
      )
  end

  # Keeps the virtualenv when only the deps or the worker changed; removes it (only if it
  # is one) when the interpreter changed, it is broken, or a fresh one is asked for.
  defp prepare_venv_dir(env, opts, ctx) do
    venv_python = PythonEnv.python_in(env.venv)

    cond do
      not File.exists?(env.venv) ->
        :ok

      not File.regular?(Path.join(env.venv, "pyvenv.cfg")) ->
        if File.ls!(env.venv) == [] do
          :ok
        else
          {:error,
           "#{env.venv} exists and is not a virtualenv (no pyvenv.cfg): not touching it. " <>
             "Remove it or point `config :snakeport, venv:` elsewhere."}
        end

      opts[:force] ->
        opts[:log].("removing #{env.venv} (--force)")
        File.rm_rf!(env.venv)
        :ok

      ctx.stamp != %{} and ctx.stamp["python"] != ctx.info.id ->
        opts[:log].(
          "the base interpreter changed (now #{ctx.base}, Python #{ctx.info.version}): " <>
            "making #{env.venv} anew"
        )

        File.rm_rf!(env.venv)
        :ok

      not File.regular?(venv_python) ->
        opts[:log].("#{env.venv} has no working interpreter: making it anew")
        File.rm_rf!(env.venv)
        :ok

      true ->
        :ok
    end
  end

  # Makes the virtualenv when it does not exist. Returns {:ok, uv | nil}: the uv found on
  # the way (PATH or the tools dir), when uv may be used.
  defp create_venv(env, opts, ctx) do
    uv = if env.installer != :pip, do: find_uv(env)
    exists? = File.regular?(PythonEnv.python_in(env.venv))

    cond do
      exists? ->
        {:ok, uv}

      uv ->
        opts[:log].(
          "creating the virtualenv #{env.venv} with uv from #{ctx.base} (Python #{ctx.info.version})"
        )

        File.mkdir_p!(Path.dirname(env.venv))

        case installer_cmd(uv, ["venv", "--python", ctx.base, env.venv], env, opts) do
          :ok -> {:ok, uv}
          error -> error
        end

      true ->
        with :ok <- venv_support(ctx.base, env) do
          opts[:log].(
            "creating the virtualenv #{env.venv} from #{ctx.base} (Python #{ctx.info.version})"
          )

          File.mkdir_p!(Path.dirname(env.venv))

          case installer_cmd(ctx.base, ["-m", "venv", env.venv], env, opts) do
            :ok -> {:ok, nil}
            error -> error
          end
        end
    end
  end

  defp venv_support(base, env) do
    case Cmd.run(base, ["-c", "import venv, ensurepip"], timeout: timeout(env, 60_000)) do
      {:ok, 0, _} ->
        :ok

      {:ok, _, out} ->
        {:error,
         "Python's venv support is missing in #{base} (#{last_line(out)}). Install it " <>
           "(Debian/Ubuntu: `sudo apt-get install python3-venv`, or python3.X-venv for " <>
           "Python 3.X), or put uv on PATH (`pipx install uv`, or see " <>
           "https://docs.astral.sh/uv/): uv makes virtualenvs without it."}

      {:error, message} ->
        {:error, message}
    end
  end

  ## The installer -------------------------------------------------------------------------

  defp uv_in_tools(env), do: Path.join([env.tools, "uv", "bin", "uv"])

  defp find_uv(env) do
    System.find_executable("uv") ||
      if File.regular?(uv_in_tools(env)), do: uv_in_tools(env)
  end

  # {:ok, {:uv, path}} | {:ok, :pip}
  defp installer(_env, _opts, uv) when is_binary(uv), do: {:ok, {:uv, uv}}
  defp installer(%{installer: :pip}, _opts, _uv), do: {:ok, :pip}

  defp installer(env, opts, nil) do
    opts[:log].("uv is not on PATH: installing it from PyPI into #{env.tools}/uv")
    tmp = Path.join(env.tools, "uv.partial")
    uv_dir = Path.join(env.tools, "uv")
    File.rm_rf!(tmp)
    File.mkdir_p!(env.tools)

    args =
      ["-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"] ++
        ["--no-warn-script-location", "--target", tmp, "uv"]

    with :ok <- installer_cmd(PythonEnv.python_in(env.venv), args, env, opts),
         :ok <- rm_ok(File.rm_rf(uv_dir)),
         :ok <- File.rename(tmp, uv_dir),
         true <- File.regular?(uv_in_tools(env)) do
      {:ok, {:uv, uv_in_tools(env)}}
    else
      failure ->
        File.rm_rf!(tmp)

        if env.installer == :uv do
          {:error,
           "uv is not on PATH and could not be installed from PyPI (#{describe(failure)}). " <>
             "Install uv (https://docs.astral.sh/uv/) or set `config :snakeport, installer: :pip`."}
        else
          opts[:warn].("could not install uv (#{describe(failure)}): installing with pip instead")
          {:ok, :pip}
        end
    end
  end

  defp rm_ok({:ok, _}), do: :ok
  defp rm_ok(other), do: other

  defp describe({:error, message}) when is_binary(message), do: message
  defp describe(other), do: inspect(other)

  defp install_packages(env, opts, ctx, installer) do
    tmp = Path.join(System.tmp_dir!(), "snakeport-worker-#{System.unique_integer([:positive])}")

    try do
      PythonEnv.copy_worker(ctx.files, tmp)

      deps_args =
        case env.deps do
          {:requirements, path} -> ["-r", path]
          _ -> ctx.reqs
        end

      opts[:log].(
        "installing the snakeport worker #{ctx.summary.worker_version} and " <>
          "#{deps_text(env.deps, ctx.reqs)} with #{installer_text(installer)}"
      )

      case installer do
        {:uv, uv} ->
          args =
            ["pip", "install", "--python", PythonEnv.python_in(env.venv)] ++
              ["--reinstall-package", "snakeport", tmp | deps_args]

          installer_cmd(uv, args, env, opts)

        :pip ->
          # pip always reinstalls a local directory: a changed worker of the same version
          # replaces the installed one.
          args =
            ["-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"] ++
              [tmp | deps_args]

          installer_cmd(PythonEnv.python_in(env.venv), args, env, opts)
      end
    after
      File.rm_rf(tmp)
    end
  end

  defp installer_text({:uv, uv}), do: "uv (#{uv})"
  defp installer_text(:pip), do: "pip"

  # Runs one step of the setup, its output shown as it comes; :ok or {:error, message}.
  defp installer_cmd(program, args, env, opts) do
    # uv must use the interpreter it is given, never download one.
    cmd_env = [{"UV_PYTHON_DOWNLOADS", "never"}]

    case Cmd.run(program, args, timeout: env.timeout, env: cmd_env, into: opts[:into]) do
      {:ok, 0, _} ->
        :ok

      {:ok, status, out} ->
        shown = if opts[:into], do: "its output is above", else: String.trim(out)

        {:error,
         "`#{Path.basename(program)} #{Enum.join(args, " ")}` exited with status #{status} " <>
           "(#{shown})"}

      {:error, message} ->
        {:error, message}
    end
  end

  @check """
  import sys, snakeport
  print("worker=%s" % snakeport.__version__)
  print("protocol=%d" % snakeport.PROTOCOL_VERSION)
  try:
      import snakeport._cetf
      print("cetf=yes")
  except ImportError as e:
      print("cetf=no " + " ".join(str(e).split()))
  """

  defp check_worker(env, opts) do
    python = PythonEnv.python_in(env.venv)

    case Cmd.run(python, ["-c", @check], timeout: timeout(env, 60_000)) do
      {:ok, 0, out} ->
        fields = parse_fields(out)

        cond do
          fields["protocol"] != Integer.to_string(Protocol.version()) ->
            {:error,
             "the installed worker speaks protocol #{fields["protocol"]}, this harness " <>
               "#{Protocol.version()}: the harness and its priv/snakeport_worker disagree"}

          fields["cetf"] == "yes" ->
            {:ok, true}

          true ->
            unless pure_python?() do
              opts[:warn].(
                "the codec's C accelerator (snakeport._cetf) was not built: the worker " <>
                  "runs its pure-Python codec, which is slower. Install a C compiler and the " <>
                  "Python headers (Debian/Ubuntu: `sudo apt-get install gcc python3-dev`), " <>
                  "then run `mix snakeport.setup --force`"
              )
            end

            {:ok, false}
        end

      {:ok, status, out} ->
        {:error,
         "the worker does not import in #{python} after the install (status #{status}): " <>
           String.trim(out)}

      {:error, message} ->
        {:error, message}
    end
  end

  @doc false
  # SNAKEPORT_PURE_PYTHON=1 asks for the pure-Python codec: no accelerator is then expected.
  def pure_python? do
    System.get_env("SNAKEPORT_PURE_PYTHON", "") not in ["", "0"]
  end

  @doc false
  # "2 deps (pandas, scikit-learn>=1.5)", "no deps", "the deps of requirements.txt (3)".
  @spec deps_text(PythonEnv.deps(), [String.t()]) :: String.t()
  def deps_text({:requirements, path}, reqs),
    do: "the deps of #{Path.basename(path)} (#{length(reqs)})"

  def deps_text(_, []), do: "no deps"
  def deps_text(_, [one]), do: "1 dep (#{one})"
  def deps_text(_, reqs), do: "#{length(reqs)} deps (#{Enum.join(reqs, ", ")})"

  defp last_line(out) do
    case out |> String.trim() |> String.split("\n") |> List.last() do
      nil -> ""
      line -> line
    end
  end
end
