defmodule Snakeport.Release do
  @moduledoc """
  Puts the managed Python virtualenv (`mix snakeport.setup`) into a release.

  Add the step after `:assemble` in your `mix.exs`:

      def project do
        [
          ...,
          releases: [
            my_app: [steps: [:assemble, &Snakeport.Release.copy_venv/1]]
          ]
        ]
      end

  and build as usual:

      mix snakeport.setup
      MIX_ENV=prod mix release

  The virtualenv is copied to `lib/snakeport-<vsn>/priv/venv` in the release, where the
  instances started without `:python` find it. A virtualenv is bound to its base
  interpreter (its `bin/python` links to it) and to the machine's OS and CPU, like a NIF:
  run the release where the same Python is installed at the same path (build it in the
  image it runs in). Your own Python code travels in your app's `priv/` (`:python_path`
  `{:priv, "python"}` with `:otp_app`).
  """

  alias Snakeport.{PythonEnv, Setup}

  @doc """
  A `mix release` step: copies the managed virtualenv into the release. Raises
  `Mix.Error` when there is no virtualenv, or it is out of date with the config and the
  worker (run `mix snakeport.setup` first).
  """
  @spec copy_venv(Mix.Release.t()) :: Mix.Release.t()
  def copy_venv(release) do
    env = PythonEnv.config()

    unless File.regular?(PythonEnv.python_in(env.venv)) do
      Mix.raise(
        "no Python virtualenv at #{env.venv} for the release: run `mix snakeport.setup` first"
      )
    end

    case Setup.plan(env) do
      {:ok, plan} ->
        unless PythonEnv.read_stamp(env.venv)["hash"] == plan.fingerprint do
          Mix.raise(
            "the Python virtualenv at #{env.venv} is out of date with the config or the " <>
              "worker: run `mix snakeport.setup` first"
          )
        end

      {:error, message} ->
        Mix.raise("cannot check the Python virtualenv at #{env.venv}: " <> message)
    end

    vsn = release.applications |> Map.fetch!(:snakeport) |> Keyword.fetch!(:vsn) |> to_string()
    target = Path.join([release.path, "lib", "snakeport-#{vsn}", "priv", "venv"])
    Mix.shell().info("* copying the Python virtualenv #{env.venv} to #{target}")
    File.rm_rf!(target)
    File.cp_r!(env.venv, target)
    release
  end
end
