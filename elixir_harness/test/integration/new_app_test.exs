defmodule Snakeport.Integration.NewAppTest do
  # The README's quick start, run for real: a new `mix new --sup` app whose only additions
  # are {:snakeport, path: ...}, `config :snakeport, python_deps: ["scikit-learn"]` and
  # {Snakeport, []} in its supervision tree; `mix snakeport.setup`; a call to scikit-learn.
  # Then what follows in elixir_harness/README.md: a second setup that does nothing,
  # `mix snakeport.doctor` (passing, then failing on an undeclared dep), and a release
  # (`Snakeport.Release.copy_venv/1`) that starts its workers and answers a call.
  #
  # Real `mix` processes in a temporary directory; PyPI is used through uv (installed from
  # PyPI when not on PATH) and the machine's caches. About a minute with warm caches.
  use ExUnit.Case, async: false

  alias Snakeport.Cmd

  @moduletag :integration
  @moduletag timeout: 900_000
  @harness Path.expand("../..", __DIR__)

  # Exactly the README's quick-start calls.
  @calls """
  {:ok, model} = Snakeport.call("sklearn.linear_model", "LinearRegression", [])
  {:ok, _} = Snakeport.method(model, "fit", [[[1], [2], [3]], [2, 4, 6]])
  {:ok, y} = Snakeport.method(model, "predict", [[[4], [5]]])
  IO.inspect(y |> Snakeport.Array.to_list() |> Enum.map(&Float.round(&1, 6)), label: "prediction")
  IO.inspect(Snakeport.get_attr!("sys", "prefix"), label: "prefix")
  """

  setup_all do
    root = Path.join(System.tmp_dir!(), "snakeport-new-app-#{System.unique_integer([:positive])}")
    File.mkdir_p!(root)
    # rm -rf, not File.rm_rf!/1: the tree holds a virtualenv with scikit-learn (tens of
    # thousands of files), which File.rm_rf!/1 (one file-server call per file) did not
    # remove within on_exit's 60 s on a loaded machine.
    on_exit(fn -> {_, 0} = System.cmd("rm", ["-rf", "--", root]) end)
    {:ok, root: root}
  end

  # Runs mix (or a release's script) in `dir` as a user would: the app's own environment,
  # not the harness tests' (MIX_ENV, SNAKEPORT_PYTHON).
  defp sh(dir, program, args, env \\ []) do
    base = [
      {"MIX_ENV", "dev"},
      {"SNAKEPORT_PYTHON", nil},
      {"MIX_EXS", nil},
      {"MIX_BUILD_PATH", nil}
    ]

    case Cmd.run(program, args, cd: dir, env: base ++ env, timeout: 600_000) do
      {:ok, status, out} -> {out, status}
      {:error, message} -> flunk(message)
    end
  end

  defp ok!(dir, program, args, env \\ []) do
    {out, status} = sh(dir, program, args, env)
    assert status == 0, "#{program} #{Enum.join(args, " ")} exited with #{status}:\n#{out}"
    out
  end

  defp edit!(path, from, to) do
    text = File.read!(path)
    assert text =~ from, "#{path} has no #{inspect(from)}"
    File.write!(path, String.replace(text, from, to, global: false))
  end

  test "the quick start: a new app calls scikit-learn; setup is idempotent; doctor; release",
       %{root: root} do
    ok!(root, "mix", ["new", "demo_app", "--sup"])
    app = Path.join(root, "demo_app")

    # 1. the dependency (and, for the release below, its step)
    edit!(
      Path.join(app, "mix.exs"),
      ~s|# {:dep_from_hexpm, "~> 0.3.0"},|,
      ~s|{:snakeport, path: #{inspect(@harness)}},|
    )

    edit!(
      Path.join(app, "mix.exs"),
      "deps: deps()",
      "deps: deps(),\n      releases: [demo_app: [steps: [:assemble, &Snakeport.Release.copy_venv/1]]]"
    )

    # 2. the Python deps
    File.mkdir_p!(Path.join(app, "config"))
    config = Path.join(app, "config/config.exs")
    File.write!(config, ~s|import Config\n\nconfig :snakeport, python_deps: ["scikit-learn"]\n|)

    # 3. the default instance in the app's supervision tree
    edit!(
      Path.join(app, "lib/demo_app/application.ex"),
      "# {DemoApp.Worker, arg}",
      "{Snakeport, []}"
    )

    # 4. mix snakeport.setup
    out = ok!(app, "mix", ["snakeport.setup"])
    venv = Path.join(app, "_build/snakeport/venv")
    assert out =~ "==> snakeport.setup: creating the virtualenv #{venv}"
    assert out =~ "installing the snakeport worker"
    assert out =~ "1 dep (scikit-learn)"
    assert out =~ "==> snakeport.setup: ready in"
    assert out =~ "C accelerator built"

    # Nothing was written into the harness (or the repository) by the install.
    repo = Path.dirname(@harness)
    refute File.exists?(Path.join(@harness, "priv/snakeport_worker/build"))
    refute File.exists?(Path.join(repo, "build"))

    for egg <- Path.wildcard(Path.join(repo, "worker/*.egg-info")) do
      # The repository's own editable install (make setup) may have one; the setup adds none.
      assert File.stat!(egg).mtime < File.stat!(Path.join(venv, "pyvenv.cfg")).mtime
    end

    # 5. calls scikit-learn from Elixir, in the managed virtualenv
    out = ok!(app, "mix", ["run", "-e", @calls])
    assert out =~ "prediction: [8.0, 10.0]"
    assert out =~ ~s|prefix: "#{venv}"|

    # A second setup with nothing changed does nothing.
    out = ok!(app, "mix", ["snakeport.setup"])
    assert out =~ "#{venv} is up to date"
    refute out =~ "installing"

    # The doctor: every check passes...
    out = ok!(app, "mix", ["snakeport.doctor"])
    assert out =~ ~r/ok +interpreter +#{Regex.escape(venv)}\/bin\/python \(Python 3\./
    assert out =~ ~r/ok +worker +snakeport \S+, protocol 1/
    assert out =~ ~r/ok +C accelerator/
    assert out =~ ~r/ok +dep scikit-learn +scikit-learn \S+, imports sklearn/
    assert out =~ ~r/ok +setup +#{Regex.escape(venv)} is up to date/
    assert out =~ "snakeport.doctor: all 6 checks passed"

    # ...and a dep declared but not installed fails, saying what to do.
    File.write!(
      config,
      ~s|import Config\n\nconfig :snakeport, python_deps: ["scikit-learn", "snakeport-absent-dist"]\n|
    )

    {out, status} = sh(app, "mix", ["snakeport.doctor"])
    assert status != 0
    assert out =~ ~r/FAIL +dep snakeport-absent-dist +snakeport-absent-dist is not installed/
    assert out =~ ~r/FAIL +setup +.* is out of date: the :python_deps changed/
    assert out =~ "-> run `mix snakeport.setup`"
    assert out =~ "snakeport.doctor: 2 of 7 checks failed"
    File.write!(config, ~s|import Config\n\nconfig :snakeport, python_deps: ["scikit-learn"]\n|)

    # A release carries the virtualenv and runs in it: with the build's virtualenv moved
    # away, the released app starts its workers and answers.
    out = ok!(app, "mix", ["release", "--overwrite"], [{"MIX_ENV", "prod"}])
    rel = Path.join(app, "_build/prod/rel/demo_app")
    assert out =~ "* copying the Python virtualenv #{venv} to #{rel}/lib/snakeport-"

    File.rename!(venv, venv <> ".away")

    try do
      out =
        ok!(rel, Path.join(rel, "bin/demo_app"), [
          "eval",
          "{:ok, _} = Application.ensure_all_started(:demo_app)\n" <> @calls
        ])

      assert out =~ "prediction: [8.0, 10.0]"
      assert out =~ ~r|prefix: "#{Regex.escape(rel)}/lib/snakeport-[^/]+/priv/venv"|
    after
      File.rename!(venv <> ".away", venv)
    end
  end
end
