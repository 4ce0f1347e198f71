defmodule Snakeport do
  @moduledoc """
  Call Python from Elixir through a supervised pool of Python worker processes
  (`python -m snakeport`), each driven as a Port speaking the Erlang external term format.

  ## Starting

  Declare your Python packages, make the virtualenv, and put Snakeport in your supervision
  tree:

      # config/config.exs
      config :snakeport, python_deps: ["scikit-learn>=1.5", "pandas"]

      # mix snakeport.setup  (the worker and the deps, in _build/snakeport/venv)

      children = [
        {Snakeport, pool_size: 2}
      ]

  Options not given default to `config :snakeport, ...`, then to:

    * `:name` - the instance name (default `Snakeport`, see *Instances*).
    * `:python` - the interpreter the workers run (`python -m snakeport`), where the
      `snakeport` worker package is installed. When not given: `config :snakeport,
      python:`, else `$SNAKEPORT_PYTHON`, else the virtualenv of `mix snakeport.setup`
      when it exists (`_build/snakeport/venv`, or `config :snakeport, venv:`; in a release,
      the copy made by `Snakeport.Release.copy_venv/1`), else `"python3"` from `$PATH`.
    * `:otp_app` - your application: what `{:priv, dir}` and relative `:python_path`
      entries are resolved against (default `nil`).
    * `:python_path` - directories put first on the workers' `PYTHONPATH` (default `[]`),
      each an absolute path, `{:priv, dir}` (`dir` in the `:otp_app`'s `priv/`),
      `{:priv, app, dir}` (in `app`'s), or a path relative to the `:otp_app`'s directory
      (`Application.app_dir/1`: the same under Mix and in a release). A directory that does
      not exist is an `ArgumentError` at start.
    * `:pool_size` - number of workers (default `System.schedulers_online/0`). `0` starts
      an instance without workers of its own, which needs no interpreter: on a node of a
      cluster (a web node), its calls run on the workers of the other nodes (see
      *Several nodes*); alone, its calls answer `:no_workers`.
    * `:placement` - where this node puts a new session in a cluster (default `:local`;
      see *Several nodes*): `:local`, `:any`, `{:node, node}` or `{:tags, [atom]}`.
    * `:tags` - atoms describing this node's workers for placement by tag (default `[]`),
      e.g. `[:gpu]`: sessions placed with `placement: {:tags, [:gpu]}` go to a node whose
      instance has all of them. (Not the sessions' `:tags` metadata maps.)
    * `:env` - extra environment variables for the workers, `{name, value}` (nil unsets).
    * `:call_timeout` - default timeout of a call in ms (default `60_000`).
    * `:session_store` - keyword list: `:default_ttl` (seconds a session that does not
      state its `:ttl_seconds` lives unused, default `3600`), `:default_max_refs` (refs a
      session that does not state its `:max_refs` may hold, default `10_000`), both passed
      to the workers (`--default-ttl-seconds`, `--default-max-refs`) and applied by them;
      `:default_overflow` (`:error` or `:evict_lru`: what a session that does not state its
      `:overflow` does when full, default `:error`), all three passed to the workers and
      applied to every kind of session (auto, `SessionContext`, `SessionStore`);
      `:max_sessions` (default `10_000`), `:cleanup_interval` (ms between TTL sweeps,
      default `60_000`), `:strict_mode` (log loud warnings above 80% of `:max_sessions`,
      default `false`).
    * `:tools` - Elixir functions that Python code may call during a call, by name:
      `[name: fun]` (see *Python calling Elixir*); more with `register_tool/3`.
    * `:python_log_level` - the least level of Python's output forwarded to `Logger`
      (`:debug`, `:info`, `:warning`, `:error`, `:critical`; default `:info`): `logging`
      records, warnings, and the lines written to stdout (`:info`) and stderr (`:warning`),
      by Python, C code or child processes, with metadata `instance`, `worker`, `os_pid`,
      `python_source`, `python_logger`, `session_id`, `python_request_id`; rate-limited by
      the worker (1,000 lines a second, the dropped ones counted). `:none` leaves Python's
      output on the VM's stderr.
    * `:tool_timeout` - ms a tool may run before it is killed and Python gets a
      `snakeport.ToolTimeout` (default `30_000`).
    * `:max_frame_bytes`, `:threads` - passed to the worker (`--max-frame-bytes`,
      `--threads`); `:worker_args` - more worker command-line arguments.
    * `:spin_us` - microseconds a worker polls for the next request before it sleeps
      (`--spin-us`, worker default `200`; `0` never polls). Saves the wake-up of a sleeping
      thread (tens of µs on a virtual machine) on busy request streams, at the cost of up to
      that much CPU time after each batch of requests; an idle worker uses none. The worker
      stops polling when another task takes its CPU, and pauses it while other programs
      keep the CPU busy.
    * `:startup_timeout` - ms to wait for a worker's ready frame (default `30_000`).
    * `:allow` - an allow-list of the Python names the workers may call (`--allow`, see
      *Security*): `nil` (default: every name), or a list of dotted names (strings or
      atoms), such as `["math", "json.loads"]`.
    * `:cancel_grace` - ms a request that the harness cancelled (its caller timed out or
      died) may take to end before its worker is marked *stuck* (default `5_000`). A stuck
      worker gets no new sessions (see *Liveness*).
    * `:stuck_timeout` - ms a stuck worker is left to recover before it is killed with
      SIGKILL and restarted (default `10_000`); `:infinity` never kills.
    * `:max_restart_backoff` - longest wait in ms before restarting a worker that keeps
      exiting (default `5_000`): a worker that ran for 10 s or more restarts at once,
      otherwise after 100 ms, doubled after each further quick exit up to this.
    * `:preload` - Python modules each worker imports before it reports ready (default
      `[]`), e.g. `["sklearn.linear_model"]`: a slow first import is paid at start
      (within `:startup_timeout`) instead of by the first call. A module that fails to
      import fails the start, naming it.

  The workers start in parallel and `start_link/1` returns once all of them are ready. A
  worker that cannot start (no interpreter, worker package missing, protocol version
  mismatch, no ready frame in time) makes `start_link/1` fail with a
  `%Snakeport.Error{reason: :worker_start_failed}` whose message says what to do (for a
  missing or mismatched worker: `mix snakeport.setup`), returned to a caller that does not
  trap exits as well. `mix snakeport.doctor` checks
  the interpreter, the worker, the C accelerator and the declared deps beforehand.

  A worker that dies later is restarted by its supervisor. While it starts again, its
  sessions are lost (their calls answer `:session_lost`, see below), new sessions go to
  the other workers, and when no worker is ready at all a call that needs a new session
  returns `:no_workers`; calls never wait for a worker to start. A worker that keeps dying
  is restarted with a backoff (`:max_restart_backoff`) and never takes the other workers
  down with it.

  ## Liveness

  A call that times out is cancelled in its worker, and so are the calls of a process that
  dies while it waits, and the calls running in a session when it is released. Code blocked
  in C (`time.sleep/1`, a lock, a GIL-holding regex) cannot honour a cancel: when a
  cancelled request has not ended `:cancel_grace` ms later, its worker is *stuck*
  (`[:snakeport, :worker, :stuck]` telemetry, a warning in the log, `status: :stuck` in
  `stats/1`) and gets no new sessions (1 s after the cancel the worker has logged, on its
  stderr, the Python stack of the call's thread, unless the call holds the GIL); if it is
  still stuck `:stuck_timeout` ms later it is killed with SIGKILL and restarted, its calls
  in flight returning `:worker_exited` and its sessions `:session_lost`, as after a crash.
  With the defaults a fresh call succeeds within about 15 s of the timeout (plus the new
  worker's start). No Python process outlives its instance or the VM: stopping an instance
  kills the workers that do not exit by themselves, and on Linux the kernel kills a worker
  when the VM dies, even by `kill -9`. The harness README lists every failure mode.

  ## Instances

  Several independent instances can run in one VM, each with its own supervisor, workers,
  session store and options (say, one pool on your ML virtualenv and one on another
  interpreter). Start each under its own `:name`; the managed virtualenv is the default of
  every instance without `:python`, and another one can be made for a second instance with
  `mix snakeport.setup --venv DIR --deps ...` (then `python: "DIR/bin/python"`):

      children = [
        {Snakeport, python: "/usr/bin/python3"},
        {Snakeport, name: MyApp.ML, python: "/opt/ml/bin/python", pool_size: 4, threads: 4}
      ]

  Every function that talks to an instance takes the option `:instance` (default
  `Snakeport`, the instance started without `:name`, so that code written for one instance
  runs unchanged):

      Snakeport.call("math", "sqrt", [2], instance: MyApp.ML)
      Snakeport.stats(instance: MyApp.ML)
      Snakeport.SessionContext.with_session([instance: MyApp.ML], fn ->
        Snakeport.call("my_models", "load", [], instance: MyApp.ML)
      end)

  Refs and `Snakeport.SessionContext`s remember their instance: `method(ref, ...)`,
  `get_attr(ref, ...)`, `release_ref(ref)` and calls with `session: ctx` go to it without
  the option. Sessions, auto-sessions and current contexts are per instance, and every
  telemetry event names its instance (metadata `:instance`). A ref or context of one
  instance used in a request to another (as target, `:session` or argument) fails with
  `:instance_mismatch`: its ids mean nothing there. The application's
  `config :snakeport, ...` applies to every instance; start options override it.

  ## Calling

      {:ok, 3} = Snakeport.call("operator", "add", [1, 2])
      {:ok, counter} = Snakeport.call("collections", "Counter", [["a", "b", "a"]], result: :ref)
      {:ok, [{"a", 2}]} = Snakeport.method(counter, "most_common", [1])

  Every function returns `{:ok, value}` or `{:error, %Snakeport.Error{}}`; the `!` variants
  return the value or raise the error. Python objects that cannot travel as data come back
  as `%Snakeport.Ref{}` held in the caller's session (see `Snakeport.SessionContext` for
  sessions, their owners and their cleanup). numpy arrays come back as `Snakeport.Array`,
  numpy scalars as numbers, dates as `Date`/`Time`/`NaiveDateTime`/`DateTime`: numpy is
  data, pandas is a working object (a ref) unless you ask for its value (`result: :value`
  gives `Snakeport.DataFrame`, `Snakeport.Series`, `Snakeport.Index`; `result: :arrow`
  gives a table as one Arrow IPC stream, `Snakeport.Arrow`, which Explorer reads). Your
  structs travel as `Snakeport.Encoder` says. The full Elixir <-> Python type mapping is in the README.

  ## Which session a call runs in

    1. the `:session` option (a session id or a `%Snakeport.SessionContext{}`), if given;
    2. else the process's current context (`Snakeport.SessionContext.with_session/2`);
    3. else, for an operation on refs (a ref target, or refs in the arguments), the refs'
       session, which the process then adopts (if that session was released, the call fails
       with `:ref_released` instead of re-creating it);
    4. else the process's own auto-session, released when the process dies.

  A ref used in another session than its own fails with `:session_mismatch`.

  A session's first use creates it, and its worker must acknowledge it: the call waits for
  the worker to open it, and a session the worker refuses to open (say, `:tags` it cannot
  decode) is not created: the call returns the worker's error (`:bad_request`).

  When a worker dies, its sessions are **lost** (calls in flight return `:worker_exited`
  at once). A lost auto-session does not block its process: the process's next call that
  does not use the lost session's refs runs in a new auto-session on a live worker, and
  only those refs answer `:session_lost`. A lost explicit session (the `:session` option,
  a context, a shared id) answers `:session_lost` to every call until
  `release_session/2`, so that its owners learn their objects are gone.

  ## Python calling Elixir

  Python code running in a call (or an `eval/3`) may call Elixir functions registered for
  the instance, synchronously:

      # Elixir
      {Snakeport, tools: [lookup_price: fn %{"sku" => sku}, _ctx -> MyApp.Prices.get(sku) end]}

      # Python (my_pricing.py), called with Snakeport.call("my_pricing", "total", [skus])
      import snakeport

      def total(skus):
          ctx = snakeport.context()
          return sum(ctx.call_elixir_tool("lookup_price", sku=s) for s in skus)

  A tool is a function of the keyword arguments (a map with string keys) and, with arity 2,
  a context map (`:instance`, `:session_id`, `:request_id`, `:caller`, `:worker`). It runs
  in a process of its own under the instance's supervisor, with the call's session as its
  current session context (so `Snakeport.call/4` inside it runs in the same session; refs
  of that session may be passed both ways), bounded by `:tool_timeout`. Its return value
  goes back to Python (`{:ok, value}` gives `value`; `{:error, reason}`, a raise, a throw
  or an exit raise `snakeport.ToolError` in Python, with `reason` `"tool_error"`; an unknown
  tool is `"tool_not_found"`; a tool past its timeout is killed and raises
  `snakeport.ToolTimeout`). If the process that made the call dies meanwhile, the tool is
  killed and the Python call cancelled.

  Built in: `get_session_state(key=..., default=None)` and `set_session_state(key=...,
  value=...)`, a key-value state per session kept by the harness and dropped with the
  session (`Snakeport.SessionStore.get_state/3` and `put_state/4` from Elixir).

  A call waiting for a tool does not count against the worker's `:threads`: the tool may
  call back into Python (even with `threads: 1`, the default), and the waiting call takes
  its place again when the answer comes, before any queued call.

  ## Security

  A worker runs any code its caller names, with the rights of its OS process:
  `Snakeport.call("os", "system", ["rm -rf ~"])`, `Snakeport.call("builtins", "eval", [code])`,
  or any attribute, dunder ones included (`method(ref, "__class__")`, `"f.__globals__"`).
  Sessions are bookkeeping (which refs a process holds, limits, TTLs), not a security
  boundary: nothing stops one caller from using another's session or refs. So only trusted
  code should choose the module, function and attribute names a worker sees.

  An app that forwards names chosen by its users starts the instance with an allow-list:

      {Snakeport, allow: ["math", "json.loads", "numpy.linalg"]}

  Then a call or module attribute is allowed when its full name (`"math.sqrt"`) is an entry
  or lies under one; every other name returns `{:error, %Snakeport.Error{reason:
  :not_allowed}}` before the worker imports anything. Names with a part that starts with `_`
  are refused everywhere (dunder attributes are how attribute paths escape), also in
  `method/4`, `get_attr/3` and `set_attr/4` on refs, which may not reach a module that no
  entry names (by its own name, `os`, or its path, `os.path`), a frame or a code object.
  `eval/3` is refused. An entry allows all that its module exposes, including functions
  that take any name or code (`builtins.getattr`, `operator.attrgetter`, `pickle.loads`):
  name exact functions rather than such modules. The allow-list decides which names can be called; it does not
  make the worker a sandbox (an allowed function that calls what it is given runs it).

  ## async def

  A call whose result is awaitable (a coroutine function, `asyncio.sleep/2`, a method
  returning a coroutine) is awaited on its worker's asyncio event loop (one per worker, on
  its own thread, started by the first such call) and answers the awaited value:

      {:ok, 5} = Snakeport.call("asyncio", "sleep", [0.01, 5])

  An awaiting call holds no thread and does not count against `:threads`, so thousands
  proceed at once in one worker. `:timeout` and cancels cancel the task (`CancelledError`
  inside it, its `finally` runs). In a coroutine, Elixir tools are called with
  `await snakeport.context().acall_elixir_tool(...)`.

  ## Call options

    * `:kwargs` - keyword arguments, a keyword list or a map (`%{"key" => v}` for names
      that are not atoms).
    * `:instance` - the instance to call (see *Instances*).
    * `:session` - see above.
    * `:timeout` - ms (default: `:call_timeout`). On timeout the call returns
      `{:error, %Snakeport.Error{reason: :timeout}}`, the worker is asked to cancel it, and
      its late reply is dropped. The same bound applies to the session store's answer
      when the call has to adopt (or create) its session first.
    * `:result` - `:auto` (default: data travels as data, other objects become refs),
      `:ref` (the whole result is one ref), `:value` (pandas objects as their structs;
      fail with `:not_encodable`, naming the Python type, rather than return refs),
      `:arrow` (a table as one Arrow IPC stream, `%Snakeport.Arrow{}`; needs pyarrow in
      the worker's environment).
    * `:placement` - where the session goes if this call creates it (default: the
      instance's `:placement`; see *Several nodes*). A process has one auto-session per
      placement it names. Also accepted by `method/4`, `get_attr/3`, `set_attr/4`,
      `eval/3` and the stream functions.

  ## Several nodes

  Instances with the same name on the connected nodes of an Erlang cluster form one pool
  (found through `:pg`; nodes that connect, disconnect, start or stop the instance are
  picked up as they do, without restarts). A session lives on the node of its worker; a
  call, and every `%Snakeport.Ref{}` of the session (`:node` says where), works from any
  node of the cluster: the request is written to the worker's port by a process on that
  node and the reply goes straight back to the caller. A new session is placed by the
  `:placement` of the call, `SessionContext` or `SessionStore` session, else of the
  instance:

    * `:local` (default) - a worker of this node when one is available, else the least
      loaded other node (a `pool_size: 0` node always places elsewhere);
    * `:any` - the least loaded node (sessions per available worker, then requests in
      flight), this one included;
    * `{:node, node}` (or `node: node`) - that node; `:no_workers` if it has no
      available worker of the instance;
    * `{:tags, tags}` (or `tags: tags`) - a node whose instance was started with all of
      `tags` (this one first, else the least loaded); `:no_workers` if none.

  For example, on a web node started with `{Snakeport, pool_size: 0}`, connected to a
  node started with `{Snakeport, pool_size: 4, tags: [:gpu]}`:

      {:ok, model} = Snakeport.call("my_models", "load", [], result: :ref,
                                    placement: {:tags, [:gpu]})
      model.node     #=> :"gpu1@host"
      {:ok, y} = Snakeport.method(model, "predict", [[1.0, 2.0]])

  The session's owners are monitored from its node, those of other nodes too: when they
  all die, or their node goes down or is disconnected (a `nodedown` counts as their
  death), the session is released in Python there. When the session's node goes down or
  is disconnected, calls in flight to it return `:worker_exited` at once and its refs
  answer `:session_lost` (a process's next call without refs gets a new auto-session).
  In a partition each side acts on what it sees: the sessions of the other side's owners
  are released, and reconnecting does not bring them back. `stats/1` has the view of the
  whole cluster; every telemetry event names its `node`.
  """

  require Logger

  alias Snakeport.{
    Client,
    Defaults,
    Error,
    Instance,
    Options,
    Ref,
    SessionContext,
    Sessions,
    Stats
  }

  @stats_timeout Snakeport.Defaults.stats_timeout()

  @type name :: String.t() | atom()
  @type session :: String.t() | SessionContext.t()
  @type call_opts :: [
          kwargs: keyword() | map(),
          instance: atom(),
          session: session(),
          timeout: timeout(),
          result: :auto | :ref | :value | :arrow,
          placement: :local | :any | {:node, node()} | {:tags, [atom()]}
        ]
  @type instance_opts :: [instance: atom(), timeout: timeout()]
  @type result :: {:ok, term()} | {:error, Error.t()}

  ## Starting ------------------------------------------------------------------------------

  @doc """
  The child specification of an instance, for a supervision tree: `{Snakeport, opts}`.
  Its id is the instance name (`Snakeport` without `:name`), so that several instances
  can share a supervisor.
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) when is_list(opts) do
    %{
      id: Keyword.get(opts, :name, __MODULE__),
      start: {__MODULE__, :start_link, [opts]},
      type: :supervisor,
      shutdown: :infinity
    }
  end

  @doc """
  Starts an instance: its session store and `:pool_size` workers (see the module doc for
  the options), returning once every worker is ready. Raises `ArgumentError` on invalid
  options; returns `{:error, %Snakeport.Error{reason: :worker_start_failed}}` when a worker
  cannot start.
  """
  @spec start_link(keyword()) :: Supervisor.on_start() | {:error, Error.t()}
  def start_link(opts \\ []) do
    config = Options.validate!(opts)

    with {:ok, config} <- resolve_python(config) do
      case start_supervisor(config) do
        {:error, reason} ->
          case find_error(reason) do
            %Error{} = error -> {:error, error}
            nil -> {:error, reason}
          end

        other ->
          other
      end
    end
  end

  defp resolve_python(config) do
    case Options.resolve_python(config) do
      {:ok, config} ->
        {:ok, config}

      {:error, error} ->
        Logger.error("[Snakeport] " <> error.message)
        {:error, error}
    end
  end

  # The instance's supervisor, linked to the caller. Its start fails when a worker cannot
  # start (no snakeport package in the interpreter, another protocol version: found out by
  # the workers, see Snakeport.Worker), and a failed start also sends its exit signal to
  # the linked caller, which would crash a caller that does not trap exits (a script, an
  # iex shell) instead of handing it the clear error. So the caller traps exits while the
  # supervisor starts; the failed supervisor's exit is taken, and any other exit signal
  # that came meanwhile is signalled again once the caller's flag is restored, with the
  # effect it would have had. A caller that traps exits already (a supervisor) gets the
  # exit message as before.
  defp start_supervisor(config) do
    if Process.flag(:trap_exit, true) do
      Snakeport.Supervisor.start_link(config)
    else
      result = Snakeport.Supervisor.start_link(config)

      case result do
        # The name was taken: that process exits :normal, which does not harm the caller.
        {:error, {:already_started, _}} ->
          :ok

        # The supervisor exits with the reason of its failed start, right after replying.
        {:error, reason} ->
          receive do
            {:EXIT, _supervisor, ^reason} -> :ok
          after
            Defaults.worker_shutdown() -> :ok
          end

        _ ->
          :ok
      end

      Process.flag(:trap_exit, false)
      resignal_exits()
      result
    end
  end

  defp resignal_exits do
    receive do
      {:EXIT, _from, :normal} -> resignal_exits()
      {:EXIT, _from, reason} -> Process.exit(self(), reason)
    after
      0 -> :ok
    end
  end

  defp find_error(%Error{} = error), do: error

  defp find_error(tuple) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> Enum.find_value(&find_error/1)

  defp find_error(_), do: nil

  ## Calls ----------------------------------------------------------------------------------

  @doc """
  Calls `module.function(*args, **kwargs)` in Python.

  `module` is a dotted module name (`"os.path"`, or an atom like `:math`); `function` may be
  a dotted attribute path (`"Path.home"`). See the module doc for `opts`.
  """
  @spec call(name(), name(), list(), call_opts()) :: result()
  def call(module, function, args \\ [], opts \\ []) when is_list(args),
    do: Client.call(module, function, args, opts)

  @doc """
  Like `call/4`, but returns the value or raises `Snakeport.Error`.
  """
  @spec call!(name(), name(), list(), call_opts()) :: term()
  def call!(module, function, args \\ [], opts \\ []),
    do: unwrap!(call(module, function, args, opts))

  @doc """
  Calls the method `name` of the object behind `ref`: `obj.name(*args, **kwargs)`, in the
  ref's instance.
  """
  @spec method(Ref.t(), name(), list(), call_opts()) :: result()
  def method(%Ref{} = ref, name, args \\ [], opts \\ []) when is_list(args),
    do: Client.method(ref, name, args, opts)

  @doc """
  Like `method/4`, but returns the value or raises `Snakeport.Error`.
  """
  @spec method!(Ref.t(), name(), list(), call_opts()) :: term()
  def method!(ref, name, args \\ [], opts \\ []), do: unwrap!(method(ref, name, args, opts))

  ## Streams -----------------------------------------------------------------------------

  @doc """
  A lazy `Stream` of the items of `module.function(*args, **kwargs)`: a Python generator,
  iterator or iterable, pulled in batches as the stream is consumed.

      Snakeport.stream("itertools", "count") |> Enum.take(3)
      #=> [0, 1, 2]

      # my_rows.py: def rows(path): ...yield one dict per row...
      Snakeport.stream("my_rows", "rows", ["big.csv"], batch_size: 500)
      |> Stream.filter(&(&1["amount"] > 100))
      |> Enum.count()

  Nothing runs until the stream is consumed; then the function is called in the consuming
  process's session (as `call/4` would), `iter()` is taken of its result and the iterator
  stays in the session, in Python, while the stream lasts. Items come in batches of at
  most `:batch_size` (default `10_000`), each ended early once its items are estimated
  at `:batch_bytes` (default 1 MiB), so that one batch is one frame of reasonable size;
  a batch is asked for only when the consumer wants more items, so a generator of
  10 GB never materialises anywhere. Items are converted like call results (`:result`):
  data travels as data, other objects become refs in the session.

  When the stream ends early (`Enum.take/2`, `Stream.take_while/2`, an exception in the
  consumer) the iterator is closed (a generator's `finally` blocks run) and released; so
  it is when the consuming process dies, and when its session is released. An exhausted
  iterator is released by the worker itself.

  Errors raise `Snakeport.Error` in the consumer (a call that fails, a `:timeout` of one
  batch, an exception of the iterator after the items it yielded before it).

  Options: `:kwargs`, `:instance`, `:session`, `:timeout` (of each batch), `:result`
  (as for `call/4`), `:batch_size`, `:batch_bytes`. An `async def` generator is not a
  stream (its call fails with `TypeError`).
  """
  @spec stream(name(), name(), list(), keyword()) :: Enumerable.t()
  def stream(module, function, args \\ [], opts \\ []) when is_list(args),
    do: Snakeport.Streams.new({:call, module, function, args}, opts)

  @doc """
  Like `stream/4`, for the items of the method `name` of a ref's object:
  `obj.name(*args, **kwargs)`, in the ref's session.

      {:ok, reader} = Snakeport.call("my_rows", "Reader", ["big.csv"])
      reader |> Snakeport.stream_method("rows") |> Enum.take(10)
  """
  @spec stream_method(Ref.t(), name(), list(), keyword()) :: Enumerable.t()
  def stream_method(%Ref{} = ref, name, args \\ [], opts \\ []) when is_list(args),
    do: Snakeport.Streams.new({:method, ref, name, args}, opts)

  @doc """
  A lazy `Stream` of the items of a ref's object: a generator or iterator returned by a
  call, or any iterable (then a new iterator over it). See `stream/4` for the batches and
  the options.

      {:ok, gen} = Snakeport.call("my_rows", "rows", ["big.csv"])
      gen |> Snakeport.to_stream() |> Enum.take(5)

  The stream takes the iterator over: once it ends or halts, the iterator is closed and
  released (when `ref` is the iterator itself, `ref` is released with it; an iterable's
  own ref, say a list's, stays).
  """
  @spec to_stream(Ref.t(), keyword()) :: Enumerable.t()
  def to_stream(%Ref{} = ref, opts \\ []) when is_list(opts),
    do:
      Snakeport.Streams.new(
        {:call, "builtins", "iter", [ref]},
        Keyword.put_new(opts, :instance, ref.instance)
      )

  @doc """
  Reads the attribute `name` (a dotted path is allowed) of a ref's object, or of a module
  when given a module name (`Snakeport.get_attr("math", "pi")`).

  Options: `:instance`, `:session`, `:timeout`, `:result`.
  """
  @spec get_attr(Ref.t() | name(), name(), keyword()) :: result()
  def get_attr(ref_or_module, name, opts \\ []), do: Client.get_attr(ref_or_module, name, opts)

  @doc """
  Like `get_attr/3`, but returns the value or raises `Snakeport.Error`.
  """
  @spec get_attr!(Ref.t() | name(), name(), keyword()) :: term()
  def get_attr!(ref_or_module, name, opts \\ []), do: unwrap!(get_attr(ref_or_module, name, opts))

  @doc """
  Sets the attribute `name` of a ref's object: `setattr(obj, name, value)`.

  Options: `:instance`, `:session`, `:timeout`.
  """
  @spec set_attr(Ref.t(), name(), term(), keyword()) :: :ok | {:error, Error.t()}
  def set_attr(%Ref{} = ref, name, value, opts \\ []), do: Client.set_attr(ref, name, value, opts)

  @doc """
  Like `set_attr/4`, but returns `:ok` or raises `Snakeport.Error`.
  """
  @spec set_attr!(Ref.t(), name(), term(), keyword()) :: :ok
  def set_attr!(ref, name, value, opts \\ []), do: unwrap!(set_attr(ref, name, value, opts))

  ## eval ------------------------------------------------------------------------------------

  @doc """
  Runs Python source in a session with `bindings` as its variables and returns the value
  of its last expression (`nil` when it does not end with one), in one round trip.

      {:ok, 42} = Snakeport.eval("x * y", %{"x" => 6, "y" => 7})
      {:ok, 2.0} = Snakeport.eval("import math\nmath.sqrt(n)", n: 4)

      {:ok, model} = Snakeport.call("sklearn.linear_model", "LinearRegression", [])
      {:ok, _} = Snakeport.method(model, "fit", [[[1], [2]], [2, 4]])
      {:ok, %Snakeport.Array{}} = Snakeport.eval("model.predict(X) * 2", %{"model" => model, "X" => [[3]]})

  `bindings` is a map (or keyword list) from variable names (strings or atoms: Python
  identifiers) to values; refs resolve to their objects, so `code` can compose calls on
  them without a round trip per step. Only the result travels back (as data, or as refs
  when it is not data, per `:result`); intermediate objects are not stored as refs, and
  each run starts from a fresh namespace (nothing persists between evals: return what you
  want to keep). The worker compiles each distinct source once (a bounded cache), so a
  fixed source with varying bindings is cheap.

  `code` is Python source run with the worker's full rights, exactly like the functions
  `call/4` runs: never build it from untrusted input (pass data as bindings instead). An
  instance started with an `:allow` list refuses every `eval` (`:not_allowed`).

  Options: `:session`, `:instance`, `:timeout`, `:result` (as for `call/4`). A syntax
  error is `{:error, %Snakeport.Error{reason: :python_error, python_type: "builtins.SyntaxError"}}`.
  """
  @spec eval(String.t(), map() | keyword(), call_opts()) :: result()
  def eval(code, bindings \\ %{}, opts \\ []), do: Client.eval(code, bindings, opts)

  @doc """
  Like `eval/3`, but returns the value or raises `Snakeport.Error`.
  """
  @spec eval!(String.t(), map() | keyword(), call_opts()) :: term()
  def eval!(code, bindings \\ %{}, opts \\ []), do: unwrap!(eval(code, bindings, opts))

  ## Tools ---------------------------------------------------------------------------------

  @doc """
  Registers (or replaces) the Elixir tool `name` of an instance: a function of arity 1
  (the kwargs map) or 2 (kwargs, context) that Python code running in a call may call with
  `snakeport.context().call_elixir_tool(name, **kwargs)` (see *Python calling Elixir*).

  Tools given in the `:tools` start option come back when the instance restarts; tools
  registered here do not. The built-in names `get_session_state` and `set_session_state`
  are reserved (`ArgumentError`).

  Options: `:instance`.

      :ok = Snakeport.register_tool(:double, fn %{"x" => x} -> 2 * x end)
  """
  @spec register_tool(name(), function(), instance: atom()) :: :ok | {:error, Error.t()}
  def register_tool(name, fun, opts \\ []) do
    opts = Keyword.validate!(opts, instance: Snakeport)

    with {:ok, inst} <- Instance.fetch(Options.name!(:instance, opts[:instance])),
         do: Snakeport.Tools.register(inst, name, fun)
  end

  @doc """
  Removes a tool registered with `register_tool/3` or the `:tools` option (idempotent).

  Options: `:instance`.
  """
  @spec unregister_tool(name(), instance: atom()) :: :ok | {:error, Error.t()}
  def unregister_tool(name, opts \\ []) do
    opts = Keyword.validate!(opts, instance: Snakeport)

    with {:ok, inst} <- Instance.fetch(Options.name!(:instance, opts[:instance])),
         do: Snakeport.Tools.unregister(inst, name)
  end

  ## Releasing ------------------------------------------------------------------------------

  @doc """
  Releases one ref in its worker (idempotent: releasing a released ref, or a ref of a
  released or lost session, returns `:ok`). Later uses of the ref fail with `:ref_released`.

  Options: `:timeout`, `:instance` (the ref's own instance; another one is an error).
  """
  @spec release_ref(Ref.t(), instance_opts()) :: :ok | {:error, Error.t()}
  def release_ref(%Ref{} = ref, opts \\ []) do
    with {:ok, inst, timeout} <- Client.admin(opts, ref),
         do: Sessions.release_ref(inst, ref, timeout)
  end

  @doc """
  Like `release_ref/2`, but raises `Snakeport.Error` on failure.
  """
  @spec release_ref!(Ref.t(), instance_opts()) :: :ok
  def release_ref!(ref, opts \\ []), do: unwrap!(release_ref(ref, opts))

  @doc """
  Releases a session now: the harness forgets it and its worker releases every object it
  holds. Returns `{:ok, count}`, the number of refs released in Python. Idempotent: an
  unknown session returns `{:ok, 0}`. Later uses of its refs fail with `:ref_released`;
  a later call naming the session id creates a new, empty session.

  Options: `:instance` (a context's own instance needs none), `:timeout`.
  """
  @spec release_session(session(), instance_opts()) ::
          {:ok, non_neg_integer()} | {:error, Error.t()}
  def release_session(session, opts \\ [])

  def release_session(%SessionContext{session_id: id} = ctx, opts) do
    with {:ok, inst, timeout} <- Client.admin(opts, ctx),
         do: Sessions.release_session(inst, id, timeout)
  end

  def release_session(session_id, opts) when is_binary(session_id) do
    with {:ok, inst, timeout} <- Client.admin(opts, nil),
         do: Sessions.release_session(inst, session_id, timeout)
  end

  @doc """
  Like `release_session/2`, but returns the count or raises `Snakeport.Error`.
  """
  @spec release_session!(session(), instance_opts()) :: non_neg_integer()
  def release_session!(session, opts \\ []), do: unwrap!(release_session(session, opts))

  ## Values --------------------------------------------------------------------------------

  @doc """
  Marks a binary to arrive in Python as `bytes` (a plain binary arrives as `str` when it is
  valid UTF-8).

      iex> Snakeport.bytes("abc")
      {:"$snakeport_bytes", "abc"}
  """
  @spec bytes(binary()) :: {:"$snakeport_bytes", binary()}
  def bytes(binary) when is_binary(binary), do: {:"$snakeport_bytes", binary}

  ## Introspection ----------------------------------------------------------------------------

  @doc """
  Describes an instance and each of its workers.

  Returns `{:ok, stats}` where `stats` has `:instance`, the aggregates `:sessions`
  (sessions known to the harness), `:python_sessions`, `:refs` (refs held in Python, all
  workers), `:in_flight`, `:requests`, `:rss_bytes`, `:pool_size`, and `:workers`: one map
  per worker with `:index`, `:status`, `:os_pid`, `:harness_sessions`, `:pending`
  (requests sent to it and not answered yet), `:stuck_ms` (how long it has been stuck, or
  `nil`) and the worker's own stats (`:sessions`, `:refs`, `:rss_bytes`, `:uptime_ms`,
  `:threads`, `:in_flight`, `:requests`, `:fast_path`) with `:stats_age_ms`, their age
  (`0`: just answered; `nil` with no stats: it never answered). `:fast_path` says whether
  the worker runs plain calls (a module's function, plain arguments) on its C fast path:
  `false` with `threads:` above 1, or on a platform where the worker's C extensions are not
  built; such calls then cost the worker ~2-3x the CPU.

  `:status` is `:up` (it answered), `:busy` (it did not answer within the timeout: its
  stats are the last ones it gave), `:stuck` (see *Liveness* in the module doc: it is not
  asked) or `:down` (not running: starting or restarting).

  Never blocked by a busy worker: the harness's own figures come from its tables, and the
  workers' own stats are asked of all of them at once and waited for at most `:timeout`
  (default `500` ms) in all.

  The figures above are this node's (`:node`; `:tags`, the instance's). With other nodes
  of the cluster running the instance (see *Running on several nodes* in the README),
  `:cluster` holds the view of all of them: `:nodes`, this node's map and each other
  node's own (asked at once, with the same `:timeout` and a second for the hop; a node
  that does not answer is `%{node: node, status: :unreachable, reason: reason}`, the
  others `status: :up`), and the sums `:pool_size`, `:sessions`, `:python_sessions`,
  `:refs`, `:in_flight`, `:requests`, `:rss_bytes`. Every worker map names its `:node`.

  Options: `:instance`, `:timeout`, `:cluster` (`false`: this node only, nothing asked of
  the others; default `true`).
  """
  @spec stats(instance: atom(), timeout: timeout(), cluster: boolean()) ::
          {:ok, map()} | {:error, Error.t()}
  def stats(opts \\ []) do
    {cluster, opts} = if is_list(opts), do: Keyword.pop(opts, :cluster, true), else: {true, opts}

    if not is_boolean(cluster), do: Options.invalid!(:cluster, "a boolean", cluster)
    opts = if is_list(opts), do: Keyword.put_new(opts, :timeout, @stats_timeout), else: opts

    with {:ok, inst, timeout} <- Client.admin(opts, nil),
         do: Stats.stats(inst, timeout, cluster)
  end

  @doc """
  Like `stats/1`, but returns the map or raises `Snakeport.Error`.
  """
  @spec stats!(instance_opts()) :: map()
  def stats!(opts \\ []), do: unwrap!(stats(opts))

  @doc """
  Describes one session: `:session_id`, `:instance`, `:worker` (index), `:os_pid`,
  `:owners` (pids), `:max_refs`, `:ttl_seconds` and `:tags` (as the worker acknowledged
  them when it opened the session: `:tags` is `nil` when none were given), `:created_at`
  and `:last_access` (Unix ms), `:auto`, `:lost`, `:refs` (refs held in Python) and
  `:python` (the worker's own description).

  Returns `{:error, %Snakeport.Error{reason: :session_not_found}}` for a session the
  harness does not know (never created, or released). Does not adopt the session.

  Options: `:instance` (a context's own instance needs none), `:timeout`.
  """
  @spec session_info(session(), instance_opts()) :: {:ok, map()} | {:error, Error.t()}
  def session_info(session, opts \\ [])

  def session_info(%SessionContext{session_id: id} = ctx, opts) do
    with {:ok, inst, timeout} <- Client.admin(opts, ctx), do: Sessions.info(inst, id, timeout)
  end

  def session_info(session_id, opts) when is_binary(session_id) do
    with {:ok, inst, timeout} <- Client.admin(opts, nil),
         do: Sessions.info(inst, session_id, timeout)
  end

  @doc """
  Like `session_info/2`, but returns the map or raises `Snakeport.Error`.
  """
  @spec session_info!(session(), instance_opts()) :: map()
  def session_info!(session, opts \\ []), do: unwrap!(session_info(session, opts))

  ## Helpers ---------------------------------------------------------------------------------

  defp unwrap!(:ok), do: :ok
  defp unwrap!({:ok, value}), do: value
  defp unwrap!({:error, %Error{} = error}), do: raise(error)
end
