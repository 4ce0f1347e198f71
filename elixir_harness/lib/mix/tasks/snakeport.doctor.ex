defmodule Mix.Tasks.Snakeport.Doctor do
  @shortdoc "Checks Snakeport's Python side and says what to do about each problem"

  @moduledoc """
  Checks what Snakeport's workers need, and prints what to do for each failure:

      mix snakeport.doctor

    * **options**: the options of the default instance from `config :snakeport, ...` are
      valid (each `:python_path` directory exists);
    * **interpreter**: the interpreter the instances use without `:python` (and which
      setting chose it) exists, runs, and is Python >= 3.10;
    * **worker**: `import snakeport` works there, and the worker speaks this harness's
      protocol version;
    * **C accelerator**: `import snakeport._cetf` works (the codec's C half; passes with a
      note when `SNAKEPORT_PURE_PYTHON=1` asks for the pure-Python codec);
    * **dep ...**: each of the `:python_deps` is installed, and its top-level modules
      import (`scikit-learn` -> `sklearn`);
    * **setup**: when the interpreter is the managed virtualenv's, it is up to date with
      the config and the worker (else `mix snakeport.setup` would change it).

  Exits with a non-zero status when a check fails.

  ## Options

    * `--venv DIR` - check the virtualenv `DIR` (made with `mix snakeport.setup --venv DIR`)
      instead of the interpreter the instances use.
    * `--deps SPEC` - the deps to check instead of `:python_deps` (as for
      `mix snakeport.setup`).
  """

  use Mix.Task

  alias Snakeport.{Doctor, PythonEnv}

  @requirements ["app.config"]

  @impl Mix.Task
  def run(args) do
    {opts, _rest} = OptionParser.parse!(args, strict: [venv: :string, deps: :keep])
    env = Mix.Tasks.Snakeport.Setup.env!(opts)
    python = if opts[:venv], do: PythonEnv.python_in(env.venv)

    checks = Doctor.run(env, python)
    width = checks |> Enum.map(&String.length(&1.check)) |> Enum.max()

    Enum.each(checks, fn check ->
      label = String.pad_trailing(check.check, width)

      case check.status do
        :ok ->
          Mix.shell().info("  ok    #{label}  #{check.detail}")

        :fail ->
          Mix.shell().info("  FAIL  #{label}  #{check.detail}")
          Mix.shell().info("        #{String.duplicate(" ", width)}  -> #{check.fix}")
      end
    end)

    case Enum.count(checks, &(&1.status == :fail)) do
      0 -> Mix.shell().info("snakeport.doctor: all #{length(checks)} checks passed")
      n -> Mix.raise("snakeport.doctor: #{n} of #{length(checks)} checks failed (see above)")
    end
  end
end
