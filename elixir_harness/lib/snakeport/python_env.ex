defmodule Snakeport.PythonEnv do
  @moduledoc false
  # The managed Python environment of `mix snakeport.setup`: where its virtualenv lives, what
  # goes into it (the worker this harness carries in priv/snakeport_worker, and the app's
  # :python_deps) and the stamp that records what was installed. Read by the Mix tasks
  # (setup, doctor), the release step, and Snakeport.Options (the default interpreter).
  # Nothing here needs Mix, so that it also runs in a release.
  #
  # Application config (`config :snakeport, ...`), read when the tasks run:
  #
  #   :python_deps    requirement strings, or the path of a requirements.txt or pyproject.toml
  #   :venv           the virtualenv's directory (default: <build root>/snakeport/venv)
  #   :base_python    the interpreter the virtualenv is made from (default: python3, python)
  #   :installer      :auto (uv on PATH, else uv from PyPI, else pip), :uv or :pip
  #   :setup_timeout  ms one installer command may run
  #
  # The worker's sources in priv/snakeport_worker are the distribution `snakeport` (its
  # setup.cfg, setup.py, README.md and worker/snakeport/): symlinks into the repository for a
  # path dependency, real files in a release (mix release dereferences priv) or a package.

  alias Snakeport.{Defaults, Protocol}

  @stamp ".snakeport-setup"
  @stamp_format "1"

  # Files of the worker's source tree that are build products or caches, never sources:
  # not hashed, not copied (an in-place build of the repository's own virtualenv leaves
  # them there).
  @junk_dirs ~w(__pycache__ build dist .pytest_cache .hypothesis)
  @junk_exts ~w(.so .pyd .pyc .pyo .o)

  @type deps :: {:list, [String.t()]} | {:requirements, Path.t()} | {:pyproject, Path.t()}
  @type t :: %{
          venv: Path.t(),
          base_python: String.t(),
          deps: deps(),
          installer: :auto | :uv | :pip,
          tools: Path.t(),
          timeout: pos_integer()
        }

  @keys [:venv, :base_python, :python_deps, :installer, :setup_timeout]

  @doc false
  # The application config keys read here.
  def keys, do: @keys

  @doc false
  # The environment to set up: `config :snakeport, ...` with `overrides` (the tasks' flags)
  # on top. Relative paths are relative to the current directory (the project's, under
  # Mix). Raises ArgumentError naming the bad key.
  @spec config(keyword()) :: t()
  def config(overrides \\ []) do
    opts =
      Application.get_all_env(:snakeport)
      |> Keyword.take(@keys)
      |> Keyword.merge(Enum.reject(overrides, fn {_, v} -> is_nil(v) end))

    %{
      venv: venv_dir(opts[:venv]),
      base_python: base_python!(opts[:base_python]),
      deps: deps!(Keyword.get(opts, :python_deps, [])),
      installer: installer!(Keyword.get(opts, :installer, :auto)),
      tools: Path.join(build_root() || Path.dirname(venv_dir(opts[:venv])), "snakeport/tools"),
      timeout:
        Snakeport.Options.pos_integer!(
          :setup_timeout,
          Keyword.get(opts, :setup_timeout, Defaults.setup_timeout())
        )
    }
  end

  defp base_python!(nil), do: nil
  defp base_python!(python) when is_binary(python) and python != "", do: python

  defp base_python!(other),
    do: Snakeport.Options.invalid!(:base_python, "a non-empty string", other)

  defp installer!(installer) when installer in [:auto, :uv, :pip], do: installer
  defp installer!(other), do: Snakeport.Options.invalid!(:installer, ":auto, :uv or :pip", other)

  @deps_expected "a list of requirement strings (\"pandas\", \"scikit-learn>=1.5\") or the " <>
                   "path of a requirements.txt or pyproject.toml"

  @doc false
  # Validates a :python_deps value: {:list, reqs} | {:requirements, abs} | {:pyproject, abs}.
  @spec deps!(term()) :: deps()
  def deps!(path) when is_binary(path) do
    abs = Path.expand(path)

    kind = if Path.basename(path) == "pyproject.toml", do: :pyproject, else: :requirements

    if File.regular?(abs) do
      {kind, abs}
    else
      Snakeport.Options.invalid!(:python_deps, @deps_expected, "#{path} (no such file: #{abs})")
    end
  end

  def deps!(list) when is_list(list) do
    Enum.each(list, fn
      req when is_binary(req) ->
        if String.trim(req) == "" or String.starts_with?(String.trim(req), "-") do
          Snakeport.Options.invalid!(
            :python_deps,
            @deps_expected <> " (installer options belong in a requirements.txt)",
            list
          )
        end

      _ ->
        Snakeport.Options.invalid!(:python_deps, @deps_expected, list)
    end)

    {:list, list}
  end

  def deps!(other), do: Snakeport.Options.invalid!(:python_deps, @deps_expected, other)

  ## Where things live -------------------------------------------------------------------------

  @doc false
  # The build root of the Mix project this harness is compiled in: `_build` (the parent of
  # `_build/<env>`), found from where the harness's own code is, so that the tasks and the
  # running app agree without Mix. nil when the harness is not loaded from a build directory.
  @spec build_root() :: Path.t() | nil
  def build_root do
    case :code.lib_dir(:snakeport) do
      {:error, _} -> nil
      dir -> Path.expand("../../..", to_string(dir))
    end
  end

  @doc false
  # The managed virtualenv's directory: `config :snakeport, venv:` (expanded), else
  # <build root>/snakeport/venv.
  @spec venv_dir(Path.t() | nil) :: Path.t()
  def venv_dir(nil), do: Path.join(build_root() || File.cwd!(), "snakeport/venv")

  def venv_dir(path) when is_binary(path) and path != "", do: Path.expand(path)

  def venv_dir(other),
    do: Snakeport.Options.invalid!(:venv, "a directory (a non-empty string)", other)

  @doc false
  # Where `Snakeport.Release.copy_venv/1` puts the virtualenv in a release: the harness's
  # own priv directory (there, a real directory of the release).
  @spec release_venv() :: Path.t() | nil
  def release_venv do
    case :code.priv_dir(:snakeport) do
      {:error, _} -> nil
      dir -> Path.join(to_string(dir), "venv")
    end
  end

  @doc false
  @spec python_in(Path.t()) :: Path.t()
  def python_in(venv), do: Path.join([venv, "bin", "python"])

  @doc false
  # The managed virtualenv's interpreter, when it exists: the release's copy first, then
  # the configured (or default) location. nil when there is none.
  @spec managed_python() :: String.t() | nil
  def managed_python do
    [release_venv(), venv_dir(Application.get_env(:snakeport, :venv))]
    |> Enum.reject(&is_nil/1)
    |> Enum.map(&python_in/1)
    |> Enum.find(&File.regular?/1)
  end

  ## The worker's sources ----------------------------------------------------------------------

  @doc false
  # The distribution `snakeport` this harness carries.
  @spec worker_dir() :: Path.t()
  def worker_dir do
    case :code.priv_dir(:snakeport) do
      {:error, _} -> raise "the :snakeport application is not in the code path"
      dir -> Path.join(to_string(dir), "snakeport_worker")
    end
  end

  @doc false
  # The source files of the distribution in `dir`, as {relative path, absolute path}, sorted,
  # symlinks followed, build products and caches left out. Raises when `dir` does not hold
  # the distribution (its setup.cfg and worker/snakeport/__init__.py).
  @spec worker_files(Path.t()) :: [{String.t(), Path.t()}]
  def worker_files(dir \\ worker_dir()) do
    for need <- ["setup.cfg", "setup.py", "worker/snakeport/__init__.py"],
        not File.regular?(Path.join(dir, need)) do
      raise "the worker's sources are incomplete: #{Path.join(dir, need)} is missing " <>
              "(the harness carries the Python distribution in priv/snakeport_worker; " <>
              "see its README, *How the worker travels with the harness*)"
    end

    dir |> walk("") |> Enum.sort()
  end

  defp walk(dir, rel) do
    dir
    |> File.ls!()
    |> Enum.flat_map(fn name ->
      abs = Path.join(dir, name)
      rel = if rel == "", do: name, else: rel <> "/" <> name

      cond do
        junk?(name) -> []
        File.dir?(abs) -> walk(abs, rel)
        File.regular?(abs) -> [{rel, abs}]
        true -> []
      end
    end)
  end

  defp junk?(name) do
    name in @junk_dirs or String.ends_with?(name, ".egg-info") or
      Path.extname(name) in @junk_exts
  end

  @doc false
  # The hash (hex) of the worker's source files: names and contents. The stamp's hashes
  # only detect changes, so the ERTS's own MD5 does (no dependency on :crypto).
  @spec worker_hash([{String.t(), Path.t()}]) :: String.t()
  def worker_hash(files) do
    files
    |> Enum.reduce(:erlang.md5_init(), fn {rel, abs}, acc ->
      acc |> :erlang.md5_update([rel, 0]) |> :erlang.md5_update([File.read!(abs), 0])
    end)
    |> :erlang.md5_final()
    |> Base.encode16(case: :lower)
  end

  @doc false
  # The worker's `__version__`, read from its sources.
  @spec worker_version(Path.t()) :: String.t()
  def worker_version(dir \\ worker_dir()) do
    source = File.read!(Path.join(dir, "worker/snakeport/__init__.py"))

    case Regex.run(~r/^__version__\s*=\s*["']([^"']+)["']/m, source) do
      [_, version] -> version
      nil -> "unknown"
    end
  end

  @doc false
  # Copies the worker's sources into `dest` (real files), for an install that builds there.
  @spec copy_worker([{String.t(), Path.t()}], Path.t()) :: :ok
  def copy_worker(files, dest) do
    Enum.each(files, fn {rel, abs} ->
      target = Path.join(dest, rel)
      File.mkdir_p!(Path.dirname(target))
      File.cp!(abs, target)
    end)
  end

  ## Dependencies --------------------------------------------------------------------------------

  @doc false
  # The distribution name of a requirement string ("scikit-learn>=1.5; python_version>'3'"
  # -> "scikit-learn"), nil for what is not a named requirement (a path, a URL, an option).
  @spec requirement_name(String.t()) :: String.t() | nil
  def requirement_name(req) do
    req = req |> String.split("#", parts: 2) |> hd() |> String.trim()

    cond do
      req == "" or String.starts_with?(req, ["-", ".", "/"]) or req =~ ~r/^\w+:\/\// ->
        nil

      match = Regex.run(~r/^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(.*)$/s, req) ->
        [_, name, rest] = match
        if String.starts_with?(rest, ["/", ":"]), do: nil, else: name

      true ->
        nil
    end
  end

  @doc false
  # The requirement strings of a requirements.txt (its comments, options and includes
  # left out).
  @spec requirements_lines(Path.t()) :: [String.t()]
  def requirements_lines(path) do
    path
    |> File.read!()
    |> String.split(["\r\n", "\n"])
    |> Enum.map(&(&1 |> String.split(" #", parts: 2) |> hd() |> String.trim()))
    |> Enum.reject(&(&1 == "" or String.starts_with?(&1, ["#", "-"])))
  end

  @pyproject_probe """
  import sys
  try:
      import tomllib
  except ImportError:
      try:
          import tomli as tomllib
      except ImportError:
          sys.stderr.write("reading pyproject.toml needs Python >= 3.11 (tomllib) or tomli\\n")
          sys.exit(3)
  with open(sys.argv[1], "rb") as f:
      deps = tomllib.load(f).get("project", {}).get("dependencies", [])
  for dep in deps:
      print("dep=" + " ".join(str(dep).split()))
  """

  @doc false
  # The requirement strings `deps` stands for; a pyproject.toml's `[project] dependencies`
  # are read with `python` (tomllib). Returns {:ok, reqs} | {:error, message}.
  @spec requirements(deps(), String.t()) :: {:ok, [String.t()]} | {:error, String.t()}
  def requirements({:list, list}, _python), do: {:ok, list}
  def requirements({:requirements, path}, _python), do: {:ok, requirements_lines(path)}

  def requirements({:pyproject, path}, python) do
    case Snakeport.Cmd.run(python, ["-c", @pyproject_probe, path], timeout: 30_000) do
      {:ok, 0, out} ->
        {:ok, for("dep=" <> dep <- String.split(out, "\n", trim: true), do: dep)}

      {:ok, _status, out} ->
        {:error,
         "cannot read the dependencies of #{path} with #{python}: #{String.trim(out)}. " <>
           "List them in :python_deps or in a requirements.txt instead."}

      {:error, message} ->
        {:error, message}
    end
  end

  ## The stamp ---------------------------------------------------------------------------------

  @doc false
  # The fingerprint of an environment: what a setup installs from. `python` is the base
  # interpreter's description (its real executable and sys.version), `reqs` the requirement
  # strings (or, for a requirements.txt, the file's content).
  @spec fingerprint(String.t(), deps(), [String.t()], String.t()) :: String.t()
  def fingerprint(python, deps, reqs, worker_hash) do
    deps_part =
      case deps do
        {:requirements, path} -> ["requirements.txt ", path, 0, File.read!(path)]
        _ -> ["requirements ", Enum.intersperse(reqs, 0)]
      end

    :erlang.md5([
      @stamp_format,
      0,
      python,
      0,
      deps_part,
      0,
      worker_hash,
      0,
      Integer.to_string(Protocol.version())
    ])
    |> Base.encode16(case: :lower)
  end

  @doc false
  @spec stamp_path(Path.t()) :: Path.t()
  def stamp_path(venv), do: Path.join(venv, @stamp)

  @doc false
  # The stamp of `venv` as a map of its `key=value` lines (%{} when there is none).
  @spec read_stamp(Path.t()) :: %{String.t() => String.t()}
  def read_stamp(venv) do
    case File.read(stamp_path(venv)) do
      {:ok, text} ->
        for line <- String.split(text, "\n", trim: true),
            [k, v] <- [String.split(line, "=", parts: 2)],
            into: %{},
            do: {k, v}

      {:error, _} ->
        %{}
    end
  end

  @doc false
  @spec write_stamp(Path.t(), [{String.t(), String.t()}]) :: :ok
  def write_stamp(venv, fields) do
    text = for {k, v} <- fields, into: "", do: "#{k}=#{String.replace(v, "\n", " ")}\n"
    File.write!(stamp_path(venv), text)
  end
end
