defmodule Snakeport.PythonEnvTest do
  # The worker's sources the harness carries, the :python_deps forms, the fingerprint of a
  # setup. Changes the application env: not async.
  use Snakeport.Case, async: false

  alias Snakeport.PythonEnv

  @moduletag snakeport: false

  @repo Path.expand("../../..", __DIR__)

  setup do
    dir = Path.join(System.tmp_dir!(), "snakeport-env-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    {:ok, tmp: dir}
  end

  describe "the worker's sources in priv/snakeport_worker" do
    test "are the repository's distribution `snakeport`, file for file" do
      files = PythonEnv.worker_files()
      rels = Enum.map(files, &elem(&1, 0))

      # Every build input of the distribution at the repository's root is carried, with the
      # same content (a file added there, e.g. a pyproject.toml, needs its link in priv).
      for name <- ~w(setup.cfg setup.py pyproject.toml MANIFEST.in README.md),
          File.exists?(Path.join(@repo, name)) do
        assert name in rels, "priv/snakeport_worker lacks #{name}: add its symlink"

        assert File.read!(Path.join(PythonEnv.worker_dir(), name)) ==
                 File.read!(Path.join(@repo, name))
      end

      # ... and every source file of worker/snakeport (build products and caches left out).
      sources =
        Path.wildcard(Path.join(@repo, "worker/snakeport/**/*"))
        |> Enum.filter(&File.regular?/1)
        |> Enum.reject(&(&1 =~ ~r/__pycache__|\.so$|\.pyc$/))
        |> Enum.map(&Path.relative_to(&1, @repo))

      assert sources != []
      assert Enum.sort(sources) == Enum.filter(rels, &String.starts_with?(&1, "worker/"))
      assert PythonEnv.worker_version() =~ ~r/^\d+\.\d+/
    end

    test "the hash follows sources, not build products or caches", %{tmp: tmp} do
      dist = Path.join(tmp, "dist")
      File.mkdir_p!(Path.join(dist, "worker/snakeport"))
      File.write!(Path.join(dist, "setup.cfg"), "[metadata]\nname = snakeport\n")
      File.write!(Path.join(dist, "setup.py"), "from setuptools import setup\nsetup()\n")
      File.write!(Path.join(dist, "worker/snakeport/__init__.py"), "__version__ = \"9.8\"\n")
      hash = PythonEnv.worker_hash(PythonEnv.worker_files(dist))
      assert PythonEnv.worker_version(dist) == "9.8"

      # What an in-place build or a test run leaves behind changes nothing.
      for junk <- ~w(worker/snakeport/__pycache__/x.pyc worker/snakeport/_cetf.cpython-311.so
                     worker/snakeport.egg-info/PKG-INFO build/lib/x.py) do
        File.mkdir_p!(Path.dirname(Path.join(dist, junk)))
        File.write!(Path.join(dist, junk), "junk")
      end

      assert PythonEnv.worker_hash(PythonEnv.worker_files(dist)) == hash

      File.write!(Path.join(dist, "worker/snakeport/_new.py"), "x = 1\n")
      refute PythonEnv.worker_hash(PythonEnv.worker_files(dist)) == hash

      # copy_worker makes a standalone copy: real files, no junk.
      copy = Path.join(tmp, "copy")
      PythonEnv.copy_worker(PythonEnv.worker_files(dist), copy)

      assert PythonEnv.worker_files(copy) |> Enum.map(&elem(&1, 0)) ==
               PythonEnv.worker_files(dist) |> Enum.map(&elem(&1, 0))

      refute File.exists?(Path.join(copy, "build"))
    end

    test "an incomplete source tree is an error naming the missing file", %{tmp: tmp} do
      assert_raise RuntimeError, ~r/setup.cfg is missing/, fn -> PythonEnv.worker_files(tmp) end
    end
  end

  describe ":python_deps" do
    test "requirement strings, a requirements.txt or a pyproject.toml", %{tmp: tmp} do
      assert PythonEnv.deps!(["pandas", "scikit-learn>=1.5"]) ==
               {:list, ["pandas", "scikit-learn>=1.5"]}

      req = Path.join(tmp, "requirements.txt")

      File.write!(
        req,
        "# comment\nnumpy>=1.26  # inline\n\n-r other.txt\n--index-url x\nsix; python_version > '3'\n"
      )

      assert PythonEnv.deps!(req) == {:requirements, req}
      assert PythonEnv.requirements_lines(req) == ["numpy>=1.26", "six; python_version > '3'"]

      pyproject = Path.join(tmp, "pyproject.toml")

      File.write!(pyproject, """
      [project]
      name = "my-py"
      dependencies = ["pandas>=2", "scikit-learn"]
      """)

      assert PythonEnv.deps!(pyproject) == {:pyproject, pyproject}

      assert PythonEnv.requirements({:pyproject, pyproject}, python()) ==
               {:ok, ["pandas>=2", "scikit-learn"]}
    end

    test "bad values are refused with a message naming the key" do
      for bad <- [:pandas, [:pandas], ["--index-url=x"], [""]] do
        assert_raise ArgumentError,
                     ~r/^expected :python_deps to be a list of requirement strings/,
                     fn ->
                       PythonEnv.deps!(bad)
                     end
      end

      assert_raise ArgumentError, ~r/got: "nope.txt \(no such file: .*nope.txt\)"/, fn ->
        PythonEnv.deps!("nope.txt")
      end

      Application.put_env(:snakeport, :installer, :conda)
      on_exit(fn -> Application.delete_env(:snakeport, :installer) end)

      assert_raise ArgumentError,
                   "expected :installer to be :auto, :uv or :pip, got: :conda",
                   fn ->
                     PythonEnv.config()
                   end
    end

    test "the distribution name of a requirement" do
      for {req, name} <- [
            {"pandas", "pandas"},
            {"scikit-learn>=1.5", "scikit-learn"},
            {"  numpy [extra] == 2.0 ; python_version > '3.9' ", "numpy"},
            {"zope.interface~=6.0", "zope.interface"},
            {"pkg @ https://example.org/pkg.whl", "pkg"},
            {"./local/dir", nil},
            {"/abs/dir", nil},
            {"https://example.org/x.whl", nil},
            {"-e .", nil},
            {"C:/x", nil}
          ] do
        assert PythonEnv.requirement_name(req) == name, "#{inspect(req)}"
      end
    end
  end

  describe "the configuration" do
    test "defaults: the venv under the build root, python3, no deps, auto installer" do
      env = PythonEnv.config()
      assert env.venv == Path.join(PythonEnv.build_root(), "snakeport/venv")
      # The harness is compiled in elixir_harness/_build/test: its build root is _build.
      assert PythonEnv.build_root() == Path.expand("../../_build", __DIR__)
      assert env.deps == {:list, []}
      assert env.installer == :auto
      assert env.base_python == nil
      assert env.tools == Path.join(PythonEnv.build_root(), "snakeport/tools")
    end

    test "config keys, then overrides (the tasks' flags)", %{tmp: tmp} do
      Application.put_env(:snakeport, :venv, "rel/venv")
      Application.put_env(:snakeport, :python_deps, ["six"])
      on_exit(fn -> Enum.each([:venv, :python_deps], &Application.delete_env(:snakeport, &1)) end)

      env = PythonEnv.config()
      assert env.venv == Path.expand("rel/venv")
      assert env.deps == {:list, ["six"]}

      env = PythonEnv.config(venv: tmp, python_deps: ["pandas"], installer: :pip)
      assert {env.venv, env.deps, env.installer} == {tmp, {:list, ["pandas"]}, :pip}
    end

    test "the tasks' flags: --venv, --deps (requirements or one file), --installer", %{tmp: tmp} do
      env! = &Mix.Tasks.Snakeport.Setup.env!/1

      env = env!.(venv: tmp, deps: "torch", deps: "numpy>=2", installer: "pip")
      assert {env.venv, env.deps, env.installer} == {tmp, {:list, ["torch", "numpy>=2"]}, :pip}
      assert env!.(deps: "torch").deps == {:list, ["torch"]}

      req = Path.join(tmp, "reqs.txt")
      File.write!(req, "six\n")
      assert env!.(deps: req).deps == {:requirements, req}

      assert_raise Mix.Error, ~r/expected :python_deps .* got: "nope.txt \(no such file/, fn ->
        env!.(deps: "nope.txt")
      end

      assert_raise Mix.Error, "expected --installer to be auto, uv or pip, got: conda", fn ->
        env!.(installer: "conda")
      end
    end

    test "the stamp's fingerprint changes with the interpreter, the deps and the worker", %{
      tmp: tmp
    } do
      base = PythonEnv.fingerprint("py 3.11", {:list, ["a"]}, ["a"], "w1")
      assert base == PythonEnv.fingerprint("py 3.11", {:list, ["a"]}, ["a"], "w1")
      refute base == PythonEnv.fingerprint("py 3.12", {:list, ["a"]}, ["a"], "w1")
      refute base == PythonEnv.fingerprint("py 3.11", {:list, ["a", "b"]}, ["a", "b"], "w1")
      refute base == PythonEnv.fingerprint("py 3.11", {:list, ["a"]}, ["a"], "w2")

      req = Path.join(tmp, "requirements.txt")
      File.write!(req, "a\n")
      one = PythonEnv.fingerprint("py", {:requirements, req}, ["a"], "w")
      File.write!(req, "a\n--index-url https://example.org/simple\n")
      refute one == PythonEnv.fingerprint("py", {:requirements, req}, ["a"], "w")

      PythonEnv.write_stamp(tmp, [{"hash", "abc"}, {"deps", "1 dep (a)"}])
      assert PythonEnv.read_stamp(tmp) == %{"hash" => "abc", "deps" => "1 dep (a)"}
      assert PythonEnv.read_stamp(Path.join(tmp, "none")) == %{}
    end
  end
end
