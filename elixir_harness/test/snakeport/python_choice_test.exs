defmodule Snakeport.PythonChoiceTest do
  # The interpreter an instance uses (and its order of precedence) and the :python_path
  # forms resolved against an application. Changes the application env and
  # $SNAKEPORT_PYTHON: not async.
  use Snakeport.Case, async: false

  alias Snakeport.Options

  @moduletag snakeport: false

  setup do
    saved_env = System.get_env("SNAKEPORT_PYTHON")
    saved_app = Application.get_all_env(:snakeport)

    on_exit(fn ->
      if saved_env,
        do: System.put_env("SNAKEPORT_PYTHON", saved_env),
        else: System.delete_env("SNAKEPORT_PYTHON")

      for {k, _} <- Application.get_all_env(:snakeport),
          not Keyword.has_key?(saved_app, k),
          do: Application.delete_env(:snakeport, k)

      for {k, v} <- saved_app, do: Application.put_env(:snakeport, k, v)
    end)

    System.delete_env("SNAKEPORT_PYTHON")
    # The repository's virtualenv (where the test interpreter lives) plays the managed one.
    venv = python() |> Path.expand() |> Path.dirname() |> Path.dirname()
    unless File.regular?(Path.join(venv, "pyvenv.cfg")), do: flunk("#{python()} is not in a venv")
    {:ok, venv: venv}
  end

  describe "the interpreter" do
    test "python3 from $PATH when nothing else is set" do
      Application.put_env(:snakeport, :venv, "/nonexistent/venv")
      assert Options.python_choice([]) == {"python3", :default}
      assert Options.validate!([]).python == "python3"
    end

    test "the managed virtualenv, when it exists, comes before python3", %{venv: venv} do
      Application.put_env(:snakeport, :venv, venv)
      assert Options.python_choice([]) == {Path.join(venv, "bin/python"), :venv}
    end

    test "the order: :python option > config python: > $SNAKEPORT_PYTHON > the managed venv",
         %{venv: venv} do
      Application.put_env(:snakeport, :venv, venv)
      System.put_env("SNAKEPORT_PYTHON", "/from/env/python")
      assert Options.python_choice([]) == {"/from/env/python", :env}

      Application.put_env(:snakeport, :python, "/from/config/python")
      assert Options.python_choice([]) == {"/from/config/python", :config}
      assert Options.validate!([]).python == "/from/config/python"

      assert Options.python_choice(python: "/from/option") == {"/from/option", :option}
      assert Options.validate!(python: "/from/option").python == "/from/option"
    end

    test "an instance started without :python runs in the managed virtualenv", %{venv: venv} do
      Application.put_env(:snakeport, :venv, venv)
      start_supervised!({Snakeport, name: __MODULE__.Venv, pool_size: 1})
      assert {:ok, prefix} = Snakeport.get_attr("sys", "prefix", instance: __MODULE__.Venv)
      assert Path.expand(prefix) == Path.expand(venv)
    end

    test "an interpreter without the worker: the error names mix snakeport.setup", %{venv: venv} do
      # A virtualenv of the same base interpreter, without snakeport in it.
      bare = Path.join(System.tmp_dir!(), "snakeport-bare-#{System.unique_integer([:positive])}")
      on_exit(fn -> File.rm_rf!(bare) end)
      {_, 0} = System.cmd(python(), ["-m", "venv", "--without-pip", bare])
      Application.put_env(:snakeport, :venv, bare)
      _ = venv

      ExUnit.CaptureLog.capture_log(fn ->
        assert {:error, %Error{reason: :worker_start_failed, message: message}} =
                 Snakeport.start_link(name: __MODULE__.Bare, pool_size: 1)

        assert message =~ "the snakeport package is not installed in #{bare}/bin/python"
        assert message =~ "run `mix snakeport.setup`"
      end)
    end
  end

  describe ":python_path" do
    setup do
      # A real application in the code path, with its own priv/python.
      root = Path.join(System.tmp_dir!(), "snakeport-apps-#{System.unique_integer([:positive])}")
      app_dir = Path.join(root, "pp_fixture_app")
      File.mkdir_p!(Path.join(app_dir, "ebin"))
      File.mkdir_p!(Path.join(app_dir, "priv/python"))

      File.write!(
        Path.join(app_dir, "priv/python/pp_fixture_mod.py"),
        "def where():\n    return __file__\n"
      )

      true = :code.add_patha(String.to_charlist(Path.join(app_dir, "ebin")))

      on_exit(fn ->
        :code.del_path(String.to_charlist(Path.join(app_dir, "ebin")))
        File.rm_rf!(root)
      end)

      {:ok, app_dir: app_dir}
    end

    test "{:priv, dir}, {:priv, app, dir} and app-relative paths resolve against the app",
         %{app_dir: app_dir} do
      priv_python = Path.join(app_dir, "priv/python")

      assert Options.validate!(otp_app: :pp_fixture_app, python_path: [{:priv, "python"}]).python_path ==
               [priv_python]

      assert Options.validate!(python_path: [{:priv, :pp_fixture_app, "python"}]).python_path ==
               [priv_python]

      assert Options.validate!(otp_app: :pp_fixture_app, python_path: ["priv/python"]).python_path ==
               [priv_python]

      assert Options.validate!(python_path: [priv_python]).python_path == [priv_python]
    end

    test "the workers import from the app's priv/python", %{app_dir: app_dir} do
      start_supervised!(
        {Snakeport,
         name: __MODULE__.Priv,
         python: python(),
         pool_size: 1,
         otp_app: :pp_fixture_app,
         python_path: [{:priv, "python"}]}
      )

      assert {:ok, file} =
               Snakeport.call("pp_fixture_mod", "where", [], instance: __MODULE__.Priv)

      assert file == Path.join(app_dir, "priv/python/pp_fixture_mod.py")
    end

    test "a missing directory is an error at start, naming the entry and the path",
         %{app_dir: app_dir} do
      missing = Path.join(app_dir, "priv/nope")

      assert_raise ArgumentError,
                   "expected :python_path entries to be existing directories, got: " <>
                     "{:priv, \"nope\"}, which is #{missing}: no such directory",
                   fn ->
                     Snakeport.start_link(
                       python: python(),
                       otp_app: :pp_fixture_app,
                       python_path: [{:priv, "nope"}]
                     )
                   end

      assert_raise ArgumentError,
                   ~r/got: "\/no\/such\/dir", which is \/no\/such\/dir: no such/,
                   fn ->
                     Snakeport.start_link(python: python(), python_path: ["/no/such/dir"])
                   end
    end

    test "a relative entry or {:priv, dir} needs :otp_app; an unknown app is an error" do
      assert_raise ArgumentError, ~r/expected :otp_app to be set .* \{:priv, "python"\}/, fn ->
        Options.validate!(python_path: [{:priv, "python"}])
      end

      assert_raise ArgumentError, ~r/expected :otp_app to be set .* "priv\/python"/, fn ->
        Options.validate!(python_path: ["priv/python"])
      end

      assert_raise ArgumentError,
                   "expected :otp_app to be an application in the code path (for " <>
                     ":python_path), got: :no_such_app_anywhere",
                   fn -> Options.validate!(python_path: [{:priv, :no_such_app_anywhere, "x"}]) end
    end

    test "config :snakeport, otp_app: applies to every instance", %{app_dir: app_dir} do
      Application.put_env(:snakeport, :otp_app, :pp_fixture_app)
      Application.put_env(:snakeport, :python_path, [{:priv, "python"}])

      assert Options.validate!([]).python_path == [Path.join(app_dir, "priv/python")]
    end
  end
end
