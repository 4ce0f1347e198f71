defmodule Snakeport.Options do
  @moduledoc false
  # Validation of the options of `Snakeport.start_link/1` (defaults come from
  # `config :snakeport, ...`, then from Snakeport.Defaults), the choice of the Python
  # interpreter, the resolution of :python_path against the app, the diagnosis of an
  # interpreter whose worker did not start, and the worker's command line and environment.

  alias Snakeport.{Defaults, Error, Protocol, PythonEnv}

  @keys [
    :python,
    :python_path,
    :otp_app,
    :pool_size,
    :env,
    :call_timeout,
    :session_store,
    :worker_args,
    :max_frame_bytes,
    :threads,
    :spin_us,
    :startup_timeout,
    :tools,
    :tool_timeout,
    :allow,
    :cancel_grace,
    :stuck_timeout,
    :max_restart_backoff,
    :python_log_level,
    :preload,
    :placement,
    :tags
  ]

  @setup_hint "run `mix snakeport.setup` (it makes the managed virtualenv with the worker " <>
                "and your :python_deps, which every instance without :python uses)"

  @type config :: %{
          name: atom(),
          python: String.t(),
          python_path: [String.t()],
          otp_app: atom() | nil,
          pool_size: non_neg_integer(),
          env: [{String.t(), String.t() | nil}],
          call_timeout: timeout(),
          session_store: %{
            default_ttl: pos_integer(),
            default_max_refs: pos_integer(),
            max_sessions: pos_integer(),
            cleanup_interval: pos_integer(),
            strict_mode: boolean(),
            default_overflow: :error | :evict_lru
          },
          worker_args: [String.t()],
          max_frame_bytes: pos_integer() | nil,
          threads: pos_integer() | nil,
          spin_us: non_neg_integer() | nil,
          startup_timeout: pos_integer(),
          tools: [{String.t(), function()}],
          tool_timeout: pos_integer(),
          allow: [String.t()] | nil,
          cancel_grace: pos_integer(),
          stuck_timeout: pos_integer() | :infinity,
          max_restart_backoff: pos_integer(),
          python_log_level: :debug | :info | :warning | :error | :critical | :none,
          preload: [String.t()],
          placement: Snakeport.Cluster.placement(),
          tags: [atom()]
        }

  @doc false
  def keys, do: @keys

  @doc false
  # Merges `config :snakeport, ...` under `opts` and validates the result. Raises
  # ArgumentError with a message naming the bad option. The instance `:name` is a start
  # option only (the application's config applies to every instance).
  @spec validate!(keyword()) :: config()
  def validate!(opts) when is_list(opts) do
    {name, opts} = Keyword.pop(opts, :name, Snakeport)
    app = Application.get_all_env(:snakeport) |> Keyword.take(@keys)
    {python, _source} = python_choice(opts)

    store =
      Keyword.merge(
        keyword!(:session_store, app[:session_store] || []),
        keyword!(:session_store, opts[:session_store] || [])
      )

    opts =
      app
      |> Keyword.merge(opts)
      |> Keyword.put(:session_store, store)
      |> Keyword.validate!(
        python: nil,
        python_path: [],
        otp_app: nil,
        pool_size: nil,
        env: [],
        call_timeout: Defaults.call_timeout(),
        session_store: [],
        worker_args: [],
        max_frame_bytes: nil,
        threads: nil,
        spin_us: nil,
        startup_timeout: Defaults.startup_timeout(),
        tools: [],
        tool_timeout: Defaults.tool_timeout(),
        allow: nil,
        cancel_grace: Defaults.cancel_grace(),
        stuck_timeout: Defaults.stuck_timeout(),
        max_restart_backoff: Defaults.max_restart_backoff(),
        python_log_level: Defaults.python_log_level(),
        preload: [],
        placement: Defaults.placement(),
        tags: []
      )

    store = Keyword.validate!(opts[:session_store], store_defaults())
    otp_app = otp_app!(opts[:otp_app])

    %{
      name: name!(:name, name),
      python: python,
      python_path: python_path!(opts[:python_path], otp_app),
      otp_app: otp_app,
      pool_size: non_neg_integer!(:pool_size, opts[:pool_size] || Defaults.pool_size()),
      env: env!(opts[:env]),
      call_timeout: timeout!(:call_timeout, opts[:call_timeout]),
      session_store: %{
        default_ttl: pos_integer!(:default_ttl, store[:default_ttl]),
        default_max_refs: pos_integer!(:default_max_refs, store[:default_max_refs]),
        max_sessions: pos_integer!(:max_sessions, store[:max_sessions]),
        cleanup_interval: pos_integer!(:cleanup_interval, store[:cleanup_interval]),
        strict_mode: boolean!(:strict_mode, store[:strict_mode]),
        default_overflow: overflow!(:default_overflow, store[:default_overflow])
      },
      worker_args: strings!(:worker_args, opts[:worker_args]),
      max_frame_bytes: optional_pos_integer!(:max_frame_bytes, opts[:max_frame_bytes]),
      threads: optional_pos_integer!(:threads, opts[:threads]),
      spin_us: spin_us!(opts[:spin_us]),
      startup_timeout: pos_integer!(:startup_timeout, opts[:startup_timeout]),
      tools: Snakeport.Tools.validate!(opts[:tools]),
      tool_timeout: pos_integer!(:tool_timeout, opts[:tool_timeout]),
      allow: allow!(opts[:allow]),
      cancel_grace: pos_integer!(:cancel_grace, opts[:cancel_grace]),
      stuck_timeout: timeout!(:stuck_timeout, opts[:stuck_timeout]),
      max_restart_backoff: pos_integer!(:max_restart_backoff, opts[:max_restart_backoff]),
      python_log_level: python_log_level!(opts[:python_log_level]),
      preload: preload!(opts[:preload]),
      placement: Snakeport.Cluster.placement!(:placement, opts[:placement]),
      tags: tags!(opts[:tags])
    }
  end

  def validate!(other),
    do: raise(ArgumentError, "expected a keyword list of options, got: #{inspect(other)}")

  defp store_defaults do
    [
      default_ttl: Defaults.ttl_seconds(),
      default_max_refs: Defaults.max_refs(),
      max_sessions: Defaults.max_sessions(),
      cleanup_interval: Defaults.cleanup_interval(),
      strict_mode: Defaults.strict_mode(),
      default_overflow: Defaults.overflow()
    ]
  end

  @doc false
  # An instance name (option `key`): an atom; module-like names such as MyApp.ML read best.
  def name!(_key, name) when is_atom(name) and name not in [nil, true, false], do: name
  def name!(key, other), do: invalid!(key, "an atom (a Snakeport instance name)", other)

  defp keyword!(key, value) do
    if Keyword.keyword?(value), do: value, else: invalid!(key, "a keyword list", value)
  end

  @type python_source :: :option | :config | :env | :venv | :default

  @doc false
  # The interpreter of an instance started with `opts`, and where it comes from, in this
  # order: the :python start option, `config :snakeport, python:`, $SNAKEPORT_PYTHON, the
  # managed virtualenv of `mix snakeport.setup` when it exists (Snakeport.PythonEnv), else
  # "python3" from $PATH.
  @spec python_choice(keyword()) :: {String.t(), python_source()}
  def python_choice(opts \\ []) do
    env = System.get_env("SNAKEPORT_PYTHON")

    cond do
      opts[:python] != nil -> {python!(opts[:python]), :option}
      (python = Application.get_env(:snakeport, :python)) != nil -> {python!(python), :config}
      is_binary(env) and env != "" -> {env, :env}
      (python = PythonEnv.managed_python()) != nil -> {python, :venv}
      true -> {"python3", :default}
    end
  end

  @doc false
  # How python_choice/1's source reads in messages.
  @spec describe_source(python_source()) :: String.t()
  def describe_source(:option), do: "the :python option"
  def describe_source(:config), do: "config :snakeport, python:"
  def describe_source(:env), do: "$SNAKEPORT_PYTHON"
  def describe_source(:venv), do: "the managed virtualenv of mix snakeport.setup"
  def describe_source(:default), do: "python3 on $PATH (no managed virtualenv yet)"

  defp python!(python) when is_binary(python) and python != "", do: python
  defp python!(other), do: invalid!(:python, "a non-empty string", other)

  defp otp_app!(nil), do: nil
  defp otp_app!(app) when is_atom(app) and app not in [true, false], do: app
  defp otp_app!(other), do: invalid!(:otp_app, "an application name (an atom)", other)

  @python_path_expected "a list of directories: absolute paths, paths relative to the " <>
                          ":otp_app's directory, {:priv, dir} or {:priv, app, dir}"

  # Each entry becomes an absolute path that must be an existing directory: `{:priv, dir}`
  # is `dir` in the :otp_app's priv directory, `{:priv, app, dir}` in `app`'s, a relative
  # path is relative to the :otp_app's directory (Application.app_dir/1: the same in a Mix
  # build and in a release), an absolute path stays as it is.
  defp python_path!(paths, otp_app) when is_list(paths) do
    Enum.map(paths, fn entry ->
      dir =
        case entry do
          {:priv, dir} when is_binary(dir) ->
            Path.join([app_dir!(otp_app, entry), "priv", dir])

          {:priv, app, dir} when is_atom(app) and is_binary(dir) ->
            Path.join([app_dir!(app, entry), "priv", dir])

          path when is_binary(path) and path != "" ->
            if Path.type(path) == :absolute,
              do: path,
              else: Path.join(app_dir!(otp_app, entry), path)

          _ ->
            invalid!(:python_path, @python_path_expected, paths)
        end
        |> Path.expand()

      if File.dir?(dir) do
        dir
      else
        raise ArgumentError,
              "expected :python_path entries to be existing directories, got: " <>
                "#{inspect(entry)}, which is #{dir}: no such directory"
      end
    end)
  end

  defp python_path!(other, _otp_app), do: invalid!(:python_path, @python_path_expected, other)

  defp app_dir!(nil, entry) do
    raise ArgumentError,
          "expected :otp_app to be set (the application that the :python_path entry " <>
            "#{inspect(entry)} is relative to), got: nil. Start Snakeport with " <>
            "otp_app: :my_app (or config :snakeport, otp_app: :my_app), or give an absolute path"
  end

  defp app_dir!(app, _entry) do
    case :code.lib_dir(app) do
      {:error, _} ->
        invalid!(:otp_app, "an application in the code path (for :python_path)", app)

      dir ->
        to_string(dir)
    end
  end

  defp env!(env) when is_list(env) or is_map(env) do
    Enum.map(env, fn
      {key, value}
      when (is_binary(key) or is_atom(key)) and (is_binary(value) or is_nil(value)) ->
        {to_string(key), value}

      _ ->
        invalid!(:env, "a map or list of {name, value} strings (value nil unsets)", env)
    end)
  end

  defp env!(other), do: invalid!(:env, "a map or list of {name, value} strings", other)

  defp strings!(key, list) when is_list(list) do
    if Enum.all?(list, &is_binary/1), do: list, else: invalid!(key, "a list of strings", list)
  end

  defp strings!(key, other), do: invalid!(key, "a list of strings", other)

  @doc false
  def pos_integer!(_key, value) when is_integer(value) and value > 0, do: value
  def pos_integer!(key, value), do: invalid!(key, "a positive integer", value)

  @doc false
  def non_neg_integer!(_key, value) when is_integer(value) and value >= 0, do: value
  def non_neg_integer!(key, value), do: invalid!(key, "a non-negative integer", value)

  # An instance's tags (placement by tag, Snakeport.Cluster): a list of atoms.
  defp tags!(tags) when is_list(tags) do
    if Enum.all?(tags, &(is_atom(&1) and &1 not in [nil, true, false])),
      do: Enum.uniq(tags),
      else: invalid!(:tags, "a list of atoms", tags)
  end

  defp tags!(other), do: invalid!(:tags, "a list of atoms", other)

  defp optional_pos_integer!(_key, nil), do: nil
  defp optional_pos_integer!(key, value), do: pos_integer!(key, value)

  # The allow-list: nil (every name), or dotted Python names (strings or atoms) whose parts
  # are identifiers that do not start with _ (the worker checks them again, exactly).
  @allow_entry ~r/^\p{L}[\p{L}\p{N}_]*(\.\p{L}[\p{L}\p{N}_]*)*$/u

  defp allow!(nil), do: nil

  defp allow!(list) when is_list(list) do
    names = Enum.map(list, &allow_name/1)

    if Enum.all?(names, &(is_binary(&1) and Regex.match?(@allow_entry, &1))),
      do: names,
      else: allow_invalid!(list)
  end

  defp allow!(other), do: allow_invalid!(other)

  defp allow_name(name) when is_atom(name) and name not in [nil, true, false],
    do: Atom.to_string(name)

  defp allow_name(name), do: name

  defp allow_invalid!(value) do
    invalid!(
      :allow,
      "nil or a list of dotted Python names whose parts do not start with _ " <>
        "(\"math\", \"json.loads\")",
      value
    )
  end

  # The worker's --spin-us accepts 0..1_000_000 (a second).
  # Module names for the worker's --preload: dotted identifiers, as strings or atoms
  # (`"sklearn.linear_model"`, `:numpy`).
  defp preload!(modules) when is_list(modules) do
    Enum.map(modules, fn module ->
      name =
        if is_atom(module) and module not in [nil, true, false],
          do: Atom.to_string(module),
          else: module

      if is_binary(name) and name =~ ~r/\A[^\W\d]\w*(\.[^\W\d]\w*)*\z/u do
        name
      else
        invalid!(
          :preload,
          "a list of Python module names (such as \"sklearn.linear_model\")",
          modules
        )
      end
    end)
  end

  defp preload!(other),
    do:
      invalid!(
        :preload,
        "a list of Python module names (such as \"sklearn.linear_model\")",
        other
      )

  defp spin_us!(nil), do: nil
  defp spin_us!(us) when is_integer(us) and us in 0..1_000_000, do: us

  defp spin_us!(other),
    do: invalid!(:spin_us, "an integer from 0 to 1_000_000 (microseconds)", other)

  defp timeout!(_key, :infinity), do: :infinity
  defp timeout!(_key, value) when is_integer(value) and value > 0, do: value
  defp timeout!(key, value), do: invalid!(key, "a positive integer or :infinity", value)

  @python_log_levels [:debug, :info, :warning, :error, :critical, :none]

  defp python_log_level!(level) when level in @python_log_levels, do: level

  defp python_log_level!(other),
    do:
      invalid!(
        :python_log_level,
        ":debug, :info, :warning, :error, :critical or :none",
        other
      )

  defp boolean!(_key, value) when is_boolean(value), do: value
  defp boolean!(key, value), do: invalid!(key, "a boolean", value)

  @doc false
  # A session's overflow policy.
  def overflow!(_key, policy) when policy in [:error, :evict_lru], do: policy
  def overflow!(key, other), do: invalid!(key, ":error or :evict_lru", other)

  @doc false
  @spec invalid!(atom(), String.t(), term()) :: no_return()
  def invalid!(key, expected, value) do
    raise ArgumentError, "expected #{inspect(key)} to be #{expected}, got: #{inspect(value)}"
  end

  ## Interpreter and diagnosis -----------------------------------------------------------

  @doc false
  # Resolves the interpreter to an absolute path (a file check, no process: the start path
  # runs no Python before the workers). Whether the worker package is installed there and
  # speaks our protocol is learnt from the workers' ready frames; when a worker fails
  # before its ready frame, diagnose/2 finds out why.
  @spec resolve_python(config()) :: {:ok, config()} | {:error, Error.t()}
  # An instance without workers of its own (a node that only calls other nodes' workers)
  # needs no interpreter.
  def resolve_python(%{pool_size: 0} = config), do: {:ok, config}

  def resolve_python(config) do
    with {:ok, exe} <- find_python(config.python) do
      {:ok, %{config | python: exe}}
    end
  end

  defp find_python(python) do
    found =
      if String.contains?(python, "/") do
        path = Path.expand(python)
        if File.regular?(path), do: path
      else
        System.find_executable(python)
      end

    if found do
      {:ok, found}
    else
      {:error,
       Error.new(
         :worker_start_failed,
         "cannot start the Python worker: no Python interpreter found at #{inspect(python)}. " <>
           "Either #{@setup_hint}, or set :python (or $SNAKEPORT_PYTHON) to an interpreter " <>
           "where the snakeport worker is installed.",
         %{python: python}
       )}
    end
  end

  @probe "import sys, snakeport; sys.stdout.write('snakeport-protocol=%d' % snakeport.PROTOCOL_VERSION)"

  @doc false
  # Why the worker cannot start in `config.python`: run by a worker whose Python process
  # failed before its ready frame (exited, or wrote something else first). One short
  # `python -c "import snakeport"` (with the worker's environment, at most `timeout` ms)
  # checks that the package is installed there and speaks our protocol version; the error
  # says what to do. :ok when it found nothing wrong (the worker failed for another reason).
  @spec diagnose(config(), pos_integer()) :: :ok | {:error, Error.t()}
  def diagnose(config, timeout) do
    Snakeport.Cmd.run(config.python, ["-c", @probe], env: system_env(config), timeout: timeout)
    |> case do
      {:ok, 0, out} ->
        case Regex.run(~r/snakeport-protocol=(\d+)/, out) do
          [_, v] ->
            if String.to_integer(v) == Protocol.version() do
              :ok
            else
              {:error, version_mismatch(config.python, String.to_integer(v))}
            end

          _ ->
            {:error,
             start_failed(config.python, "unexpected probe output: #{String.slice(out, 0, 500)}")}
        end

      {:ok, status, out} ->
        if out =~ "No module named" and out =~ "snakeport" do
          {:error,
           Error.new(
             :worker_start_failed,
             "cannot start the Python worker: the snakeport package is not installed in " <>
               "#{config.python} (#{last_line(out)}). Either #{@setup_hint}, or set :python " <>
               "(or $SNAKEPORT_PYTHON) to an interpreter that has it.",
             %{python: config.python, output: out}
           )}
        else
          {:error,
           start_failed(
             config.python,
             "exited with #{inspect(status)}: #{String.slice(out, 0, 2000)}"
           )}
        end

      {:error, message} ->
        {:error, start_failed(config.python, "failed: #{message}")}
    end
  end

  @doc false
  def version_mismatch(python, version) do
    Error.new(
      :worker_start_failed,
      "cannot start the Python worker: protocol version mismatch: this harness speaks " <>
        "protocol #{Protocol.version()}, the snakeport package in #{python} speaks protocol " <>
        "#{inspect(version)}. Install matching versions of the harness and the worker: " <>
        "#{install_hint(python)}.",
      %{python: python, harness_protocol: Protocol.version(), worker_protocol: version}
    )
  end

  defp start_failed(python, what) do
    Error.new(
      :worker_start_failed,
      "cannot start the Python worker: `#{python} -c \"import snakeport\"` #{what}. " <>
        "Check that #{python} runs and that the worker is installed: #{install_hint(python)}.",
      %{python: python}
    )
  end

  defp last_line(out), do: out |> String.trim() |> String.split("\n") |> List.last()

  @doc false
  # What to do when the worker in `python` is missing or does not match this harness.
  def install_hint(python) do
    "#{@setup_hint}; or, for #{python} itself, run `mix snakeport.setup --venv DIR` and " <>
      "point :python at DIR/bin/python"
  end

  ## Environment -----------------------------------------------------------------------------

  @doc false
  # The worker's extra environment, for System.cmd/3 (binaries; nil unsets).
  @spec system_env(config()) :: [{String.t(), String.t() | nil}]
  def system_env(%{python_path: paths, env: env}) do
    user = Map.new(env)

    python_path =
      case paths do
        [] ->
          []

        _ ->
          existing = Map.get(user, "PYTHONPATH", System.get_env("PYTHONPATH"))
          [{"PYTHONPATH", Enum.join(paths ++ List.wrap(existing), ":")}]
      end

    Enum.reject(env, fn {k, _} -> k == "PYTHONPATH" and paths != [] end) ++ python_path
  end

  @doc false
  # The same environment for open_port/2 (charlists; false unsets).
  @spec port_env(config()) :: [{charlist(), charlist() | false}]
  def port_env(config) do
    for {k, v} <- system_env(config),
        do: {String.to_charlist(k), if(v, do: String.to_charlist(v), else: false)}
  end

  @doc false
  # Command-line flags of `python -m snakeport`. The session defaults always come from the
  # instance's config (so that a session opened without limits gets them from the worker);
  # `--vm-pid` lets the worker check at start that this VM is still its ancestor (see
  # snakeport._process.die_with_parent); :worker_args come last, so that they can override
  # any flag.
  @spec worker_flags(config()) :: [String.t()]
  def worker_flags(config) do
    flag(config.session_store.default_max_refs, "--default-max-refs") ++
      flag(config.session_store.default_ttl, "--default-ttl-seconds") ++
      ["--default-overflow", Atom.to_string(config.session_store.default_overflow)] ++
      ["--tool-timeout", seconds(config.tool_timeout)] ++
      flag(config.max_frame_bytes, "--max-frame-bytes") ++
      flag(config.threads, "--threads") ++
      flag(config.spin_us, "--spin-us") ++
      allow_flag(config.allow) ++
      ["--vm-pid", System.pid()] ++
      forward_logs(config.python_log_level) ++
      Enum.flat_map(config.preload, &["--preload", &1]) ++ config.worker_args
  end

  # One --allow with every entry (an empty value: an empty list, nothing allowed).
  defp allow_flag(nil), do: []
  defp allow_flag(names), do: ["--allow", Enum.join(names, ",")]

  # Python's output to Logger (log events) unless :none.
  defp forward_logs(:none), do: []
  defp forward_logs(level), do: ["--forward-logs", level |> Atom.to_string() |> String.upcase()]

  @doc false
  # The worker's exit status when a --preload import failed (before its ready frame).
  def preload_failed_status, do: 3

  defp flag(nil, _name), do: []
  defp flag(value, name), do: [name, Integer.to_string(value)]

  # Milliseconds as the worker's seconds ("30", "1.5").
  defp seconds(ms) when rem(ms, 1000) == 0, do: Integer.to_string(div(ms, 1000))
  defp seconds(ms), do: :erlang.float_to_binary(ms / 1000, [:compact, decimals: 3])
end
