defmodule Mix.Tasks.Snakeport.Setup do
  @shortdoc "Makes Snakeport's Python virtualenv: the worker and your :python_deps"

  @moduledoc """
  Makes the managed Python virtualenv that Snakeport's workers run in, and installs into it
  the worker this harness carries (its Python package, in the harness's `priv/`) and your
  `:python_deps`.

      mix snakeport.setup

  Configuration (`config :snakeport, ...`, e.g. in `config/config.exs`):

    * `:python_deps` - the Python packages your code needs: a list of requirement strings
      (`["scikit-learn>=1.5", "pandas"]`), or the path of a `requirements.txt` or a
      `pyproject.toml` (its `[project] dependencies`), relative to the project. Default `[]`.
    * `:venv` - where the virtualenv goes (default `_build/snakeport/venv`: one for every
      Mix environment of the project).
    * `:base_python` - the interpreter the virtualenv is made from (default `python3` on
      `PATH`, else `python`; Python >= 3.10).
    * `:installer` - `:auto` (default: `uv` when it is on `PATH`, else `uv` installed from
      PyPI into `_build/snakeport/tools`, else `pip`), `:uv` or `:pip`.
    * `:setup_timeout` - ms one step (making the virtualenv, the install) may take
      (default 20 minutes).

  It is idempotent: a stamp in the virtualenv records what was installed (the base
  interpreter, the deps, the worker's sources), and a run with nothing changed returns at
  once. When the deps or the worker changed, it installs into the existing virtualenv;
  when the base interpreter changed, it makes the virtualenv anew. The worker is built from
  a temporary copy of its sources: nothing is written into the harness or your project
  besides the virtualenv.

  Instances started without `:python` then use the virtualenv's interpreter (see
  `Snakeport` for the order: `:python`, `config :snakeport, python:`, `$SNAKEPORT_PYTHON`,
  this virtualenv, `python3`). `mix snakeport.doctor` checks the result.

  ## Options

    * `--force` - make the virtualenv anew and install everything again.
    * `--venv DIR` - set up `DIR` instead of the configured virtualenv: for a second
      instance on its own virtualenv (start it with `python: "DIR/bin/python"`).
    * `--deps SPEC` - the deps to install instead of `:python_deps`: a requirement (repeat
      the option for several) or the path of a `requirements.txt`/`pyproject.toml`.
    * `--base-python PATH`, `--installer auto|uv|pip` - instead of the config's.
  """

  use Mix.Task

  alias Snakeport.{Options, PythonEnv, Setup}

  @requirements ["app.config"]

  @switches [
    force: :boolean,
    venv: :string,
    deps: :keep,
    base_python: :string,
    installer: :string
  ]

  @impl Mix.Task
  def run(args) do
    {opts, _rest} = OptionParser.parse!(args, strict: @switches)
    env = env!(opts)

    result =
      Setup.run(env,
        force: Keyword.get(opts, :force, false),
        log: &Mix.shell().info("==> snakeport.setup: " <> &1),
        warn: &Mix.shell().error("==> snakeport.setup: warning: " <> &1),
        into: &IO.write/1
      )

    case result do
      {:ok, summary} ->
        unless opts[:venv], do: precedence_note(summary.python)
        :ok

      {:error, message} ->
        Mix.raise("snakeport.setup failed: " <> message)
    end
  end

  @doc false
  # The environment of `config :snakeport, ...` with the flags on top.
  def env!(opts) do
    PythonEnv.config(
      venv: opts[:venv],
      python_deps: deps_flag(Keyword.get_values(opts, :deps)),
      base_python: opts[:base_python],
      installer: installer_flag(opts[:installer])
    )
  rescue
    e in ArgumentError -> Mix.raise(Exception.message(e))
  end

  defp deps_flag([]), do: nil

  # One value naming a requirements file (or an existing file) is that file.
  defp deps_flag([one]) do
    if File.regular?(one) or String.ends_with?(one, ".txt") or
         Path.basename(one) == "pyproject.toml",
       do: one,
       else: [one]
  end

  defp deps_flag(many), do: many

  defp installer_flag(nil), do: nil
  defp installer_flag(name) when name in ["auto", "uv", "pip"], do: String.to_atom(name)

  defp installer_flag(other),
    do: Mix.raise("expected --installer to be auto, uv or pip, got: #{other}")

  # Say so when the config or the environment makes the instances use another interpreter.
  defp precedence_note(venv_python) do
    case Options.python_choice([]) do
      {^venv_python, _} ->
        :ok

      {python, source} when source in [:config, :env] ->
        Mix.shell().error(
          "==> snakeport.setup: note: instances started without :python use #{python} " <>
            "(#{Options.describe_source(source)}), not this virtualenv"
        )

      _ ->
        :ok
    end
  end
end
