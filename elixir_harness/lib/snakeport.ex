defmodule Snakeport do
  @moduledoc """
  Call Python from Elixir through a supervised pool of Python worker processes
  (`python -m snakeport`), each driven as a Port speaking the Erlang external term format.

  ## Starting

  Put Snakeport in your supervision tree (one instance per VM, registered under fixed names):

      children = [
        {Snakeport, python: "/path/to/venv/bin/python", pool_size: 2}
      ]

  Options not given default to `config :snakeport, ...`, then to:

    * `:python` - the interpreter where the `snakeport` worker package is installed
      (default: `$SNAKEPORT_PYTHON`, else `"python3"` from `$PATH`).
    * `:python_path` - extra directories for the worker's `PYTHONPATH` (default `[]`).
    * `:pool_size` - number of workers (default `System.schedulers_online/0`).
    * `:env` - extra environment variables for the workers, `{name, value}` (nil unsets).
    * `:call_timeout` - default timeout of a call in ms (default `60_000`).
    * `:session_store` - keyword list: `:default_ttl` (seconds an auto-session or a session
      adopted by id lives unused, default `3600`), `:max_sessions` (default `10_000`),
      `:cleanup_interval` (ms between TTL sweeps, default `60_000`), `:strict_mode` (log
      loud warnings above 80% of `:max_sessions`, default `false`).
    * `:max_frame_bytes`, `:threads` - passed to the worker (`--max-frame-bytes`,
      `--threads`); `:worker_args` - more worker command-line arguments.
    * `:spin_us` - microseconds a worker polls for the next request before it sleeps
      (`--spin-us`, worker default `200`; `0` never polls). Saves the wake-up of a sleeping
      thread (tens of µs on a virtual machine) on busy request streams, at the cost of up to
      that much CPU time after each batch of requests; an idle worker uses none. The worker
      stops polling when another task takes its CPU, and pauses it while other programs
      keep the CPU busy.
    * `:startup_timeout` - ms to wait for a worker's ready frame (default `30_000`).

  A worker that cannot start (no interpreter, worker package missing, protocol version
  mismatch, no ready frame in time) makes `start_link/1` fail with a
  `%Snakeport.Error{reason: :worker_start_failed}` whose message says what to do.

  ## Calling

      {:ok, 3} = Snakeport.call("operator", "add", [1, 2])
      {:ok, counter} = Snakeport.call("collections", "Counter", [["a", "b", "a"]], result: :ref)
      {:ok, [{"a", 2}]} = Snakeport.method(counter, "most_common", [1])

  Every function returns `{:ok, value}` or `{:error, %Snakeport.Error{}}`; the `!` variants
  return the value or raise the error. Python objects that cannot travel as data come back
  as `%Snakeport.Ref{}` held in the caller's session (see `Snakeport.SessionContext` for
  sessions, their owners and their cleanup). The Elixir <-> Python type mapping is in the
  README.

  ## Which session a call runs in

    1. the `:session` option (a session id or a `%Snakeport.SessionContext{}`), if given;
    2. else the process's current context (`Snakeport.SessionContext.with_session/2`);
    3. else, for an operation on refs (a ref target, or refs in the arguments), the refs'
       session, which the process then adopts (if that session was released, the call fails
       with `:ref_released` instead of re-creating it);
    4. else the process's own auto-session, released when the process dies.

  A ref used in another session than its own fails with `:session_mismatch`.

  When a worker dies, its sessions are **lost** (calls in flight return `:worker_exited`
  at once). A lost auto-session does not block its process: the process's next call that
  does not use the lost session's refs runs in a new auto-session on a live worker, and
  only those refs answer `:session_lost`. A lost explicit session (the `:session` option,
  a context, a shared id) answers `:session_lost` to every call until
  `release_session/1`, so that its owners learn their objects are gone.

  ## Call options

    * `:kwargs` - keyword arguments, a keyword list or a map (`%{"key" => v}` for names
      that are not atoms).
    * `:session` - see above.
    * `:timeout` - ms (default: `:call_timeout`). On timeout the call returns
      `{:error, %Snakeport.Error{reason: :timeout}}`, the worker is asked to cancel it, and
      its late reply is dropped. The same bound applies to the session store's answer
      when the call has to adopt its session first.
    * `:result` - `:auto` (default: data travels as data, other objects become refs),
      `:ref` (the whole result is one ref), `:value` (fail with `:not_encodable` rather
      than return refs).
  """

  require Logger

  alias Snakeport.{Client, Error, Options, Pool, Protocol, Ref, SessionContext, Sessions}

  @type name :: String.t() | atom()
  @type session :: String.t() | SessionContext.t()
  @type call_opts :: [
          kwargs: keyword() | map(),
          session: session(),
          timeout: timeout(),
          result: :auto | :ref | :value
        ]
  @type result :: {:ok, term()} | {:error, Error.t()}

  @call_keys [:kwargs, :session, :timeout, :result]
  @attr_keys [:session, :timeout, :result]
  @set_keys [:session, :timeout]

  ## Starting ------------------------------------------------------------------------------

  @doc """
  The child specification of the harness, for a supervision tree: `{Snakeport, opts}`.
  """
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: __MODULE__,
      start: {__MODULE__, :start_link, [opts]},
      type: :supervisor,
      shutdown: :infinity
    }
  end

  @doc """
  Starts the harness: the session store and `:pool_size` workers (see the module doc for
  the options). Raises `ArgumentError` on invalid options; returns
  `{:error, %Snakeport.Error{reason: :worker_start_failed}}` when the worker cannot start.
  """
  @spec start_link(keyword()) :: Supervisor.on_start() | {:error, Error.t()}
  def start_link(opts \\ []) do
    config = Options.validate!(opts)

    with {:ok, config} <- preflight(config) do
      case Snakeport.Supervisor.start_link(config) do
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

  defp preflight(config) do
    case Options.preflight(config) do
      {:ok, config} ->
        {:ok, config}

      {:error, error} ->
        Logger.error("[Snakeport] " <> error.message)
        {:error, error}
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
  def call(module, function, args \\ [], opts \\ []) when is_list(args) do
    module = Protocol.name(module)
    function = Protocol.name(function)
    parsed = Client.parse_opts(opts, @call_keys)
    {{args, kwargs}, ref_session} = Protocol.to_wire({args, parsed.kwargs})
    meta = %{op: :call, module: module, function: function}

    Client.run(meta, parsed, nil, ref_session, fn id, session ->
      {:call, id, session, module, function, args, kwargs, parsed.req_opts}
    end)
  end

  @doc """
  Like `call/4`, but returns the value or raises `Snakeport.Error`.
  """
  @spec call!(name(), name(), list(), call_opts()) :: term()
  def call!(module, function, args \\ [], opts \\ []),
    do: unwrap!(call(module, function, args, opts))

  @doc """
  Calls the method `name` of the object behind `ref`: `obj.name(*args, **kwargs)`.
  """
  @spec method(Ref.t(), name(), list(), call_opts()) :: result()
  def method(%Ref{} = ref, name, args \\ [], opts \\ []) when is_list(args) do
    name = Protocol.name(name)
    parsed = Client.parse_opts(opts, @call_keys)
    {{args, kwargs}, _} = Protocol.to_wire({args, parsed.kwargs})
    wire = ref_to_wire(ref)
    meta = %{op: :method, name: name, type: ref.type}

    Client.run(meta, parsed, ref, nil, fn id, session ->
      {:method, id, session, wire, name, args, kwargs, parsed.req_opts}
    end)
  end

  @doc """
  Like `method/4`, but returns the value or raises `Snakeport.Error`.
  """
  @spec method!(Ref.t(), name(), list(), call_opts()) :: term()
  def method!(ref, name, args \\ [], opts \\ []), do: unwrap!(method(ref, name, args, opts))

  @doc """
  Reads the attribute `name` (a dotted path is allowed) of a ref's object, or of a module
  when given a module name (`Snakeport.get_attr("math", "pi")`).

  Options: `:session`, `:timeout`, `:result`.
  """
  @spec get_attr(Ref.t() | name(), name(), keyword()) :: result()
  def get_attr(ref_or_module, name, opts \\ [])

  def get_attr(%Ref{} = ref, name, opts) do
    name = Protocol.name(name)
    parsed = Client.parse_opts(opts, @attr_keys)
    wire = ref_to_wire(ref)

    Client.run(%{op: :getattr, name: name, type: ref.type}, parsed, ref, nil, fn id, session ->
      {:getattr, id, session, wire, name, parsed.req_opts}
    end)
  end

  def get_attr(module, name, opts) do
    module = Protocol.name(module)
    name = Protocol.name(name)
    parsed = Client.parse_opts(opts, @attr_keys)

    Client.run(%{op: :getattr, module: module, name: name}, parsed, nil, nil, fn id, session ->
      {:getattr, id, session, {:module, module}, name, parsed.req_opts}
    end)
  end

  @doc """
  Like `get_attr/3`, but returns the value or raises `Snakeport.Error`.
  """
  @spec get_attr!(Ref.t() | name(), name(), keyword()) :: term()
  def get_attr!(ref_or_module, name, opts \\ []), do: unwrap!(get_attr(ref_or_module, name, opts))

  @doc """
  Sets the attribute `name` of a ref's object: `setattr(obj, name, value)`.

  Options: `:session`, `:timeout`.
  """
  @spec set_attr(Ref.t(), name(), term(), keyword()) :: :ok | {:error, Error.t()}
  def set_attr(%Ref{} = ref, name, value, opts \\ []) do
    name = Protocol.name(name)
    parsed = Client.parse_opts(opts, @set_keys)
    {value, _} = Protocol.to_wire(value)
    wire = ref_to_wire(ref)

    Client.run(%{op: :setattr, name: name, type: ref.type}, parsed, ref, nil, fn id, session ->
      {:setattr, id, session, wire, name, value, %{}}
    end)
    |> case do
      {:ok, _} -> :ok
      error -> error
    end
  end

  @doc """
  Like `set_attr/4`, but returns `:ok` or raises `Snakeport.Error`.
  """
  @spec set_attr!(Ref.t(), name(), term(), keyword()) :: :ok
  def set_attr!(ref, name, value, opts \\ []), do: unwrap!(set_attr(ref, name, value, opts))

  ## Releasing ------------------------------------------------------------------------------

  @doc """
  Releases one ref in its worker (idempotent: releasing a released ref, or a ref of a
  released or lost session, returns `:ok`). Later uses of the ref fail with `:ref_released`.
  """
  @spec release_ref(Ref.t()) :: :ok | {:error, Error.t()}
  def release_ref(%Ref{session_id: sid} = ref) do
    case Sessions.lookup(sid) do
      {:ok, info, false} ->
        wire = ref_to_wire(ref)

        case Client.worker_request(
               info.worker,
               &{:release_ref, &1, sid, wire},
               Client.config().call_timeout
             ) do
          {:ok, _} ->
            :ok

          {:error, %Error{reason: reason}} when reason in [:session_not_found, :ref_not_found] ->
            :ok

          {:error, %Error{reason: :worker_exited}} ->
            :ok

          error ->
            error
        end

      {:ok, _info, true} ->
        :ok

      :not_found ->
        :ok

      {:error, _} = error ->
        error
    end
  end

  @doc """
  Like `release_ref/1`, but raises `Snakeport.Error` on failure.
  """
  @spec release_ref!(Ref.t()) :: :ok
  def release_ref!(ref), do: unwrap!(release_ref(ref))

  @doc """
  Releases a session now: the harness forgets it and its worker releases every object it
  holds. Returns `{:ok, count}`, the number of refs released in Python. Idempotent: an
  unknown session returns `{:ok, 0}`. Later uses of its refs fail with `:ref_released`;
  a later call naming the session id creates a new, empty session.
  """
  @spec release_session(session()) :: {:ok, non_neg_integer()} | {:error, Error.t()}
  def release_session(%SessionContext{session_id: id}), do: release_session(id)

  def release_session(session_id) when is_binary(session_id) do
    timeout = Client.config().call_timeout

    case Sessions.release(session_id) do
      {:ok, _info, :lost} ->
        {:ok, 0}

      {:ok, info, {:reply, frame}} ->
        released(Protocol.decode_reply(frame, info.index))

      {:ok, _info, {:error, reason}} ->
        released({:error, Client.transport_error(reason, nil, timeout)})

      :not_found ->
        # Not known here; make sure no worker keeps it either (idempotent in Python).
        Pool.entries()
        |> Enum.map(&release_in(&1, session_id, timeout))
        |> Enum.reduce({:ok, 0}, fn
          {:ok, n}, {:ok, total} -> {:ok, total + n}
          _, acc -> acc
        end)

      {:error, _} = error ->
        error
    end
  end

  defp release_in(entry, session_id, timeout) do
    released(Client.worker_request(entry, &{:release_session, &1, session_id}, timeout))
  end

  defp released({:ok, %{released: n}}) when is_integer(n), do: {:ok, n}
  defp released({:ok, _}), do: {:ok, 0}
  defp released({:error, %Error{reason: :worker_exited}}), do: {:ok, 0}
  defp released(error), do: error

  @doc """
  Like `release_session/1`, but returns the count or raises `Snakeport.Error`.
  """
  @spec release_session!(session()) :: non_neg_integer()
  def release_session!(session), do: unwrap!(release_session(session))

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
  Describes the harness and each worker.

  Returns `{:ok, stats}` where `stats` has the aggregates `:sessions` (sessions known to the
  harness), `:python_sessions`, `:refs` (refs held in Python, all workers), `:in_flight`,
  `:requests`, `:rss_bytes`, `:pool_size`, and `:workers`: one map per worker with `:index`,
  `:status` (`:up` or `:down`), `:os_pid`, `:harness_sessions` and the worker's own stats
  (`:sessions`, `:refs`, `:rss_bytes`, `:uptime_ms`, `:threads`, `:in_flight`, `:requests`).
  """
  @spec stats() :: {:ok, map()} | {:error, Error.t()}
  def stats do
    with {:ok, total, per_worker} <- Sessions.counts() do
      timeout = Client.config().call_timeout
      infos = Pool.infos()

      pending =
        for {entry, info} <- infos do
          {entry, info, Snakeport.Worker.send_request(entry, &Protocol.encode({:stats, &1}))}
        end

      up =
        for {entry, info, sent} <- pending, into: %{} do
          base = %{
            index: entry.index,
            os_pid: entry.os_pid,
            status: :up,
            python: Map.get(info, :python),
            snakeport: Map.get(info, :snakeport),
            harness_sessions: Map.get(per_worker, entry.pid, 0)
          }

          stats =
            with {:ok, handle} <- sent,
                 {:ok, frame} <- Snakeport.Worker.await(handle, timeout),
                 {:ok, %{} = stats} <- Protocol.decode_reply(frame, entry.index) do
              Map.merge(stats, base)
            else
              _ -> Map.merge(base, %{status: :down, sessions: 0, refs: 0})
            end

          {entry.index, stats}
        end

      pool_size = max(Client.config().pool_size, map_size(up))

      workers =
        for index <- 0..(pool_size - 1)//1 do
          Map.get(up, index, %{
            index: index,
            status: :down,
            os_pid: nil,
            sessions: 0,
            refs: 0,
            harness_sessions: 0
          })
        end

      sum = fn key -> workers |> Enum.map(&(Map.get(&1, key) || 0)) |> Enum.sum() end

      {:ok,
       %{
         pool_size: pool_size,
         sessions: total,
         python_sessions: sum.(:sessions),
         refs: sum.(:refs),
         in_flight: sum.(:in_flight),
         requests: sum.(:requests),
         rss_bytes: sum.(:rss_bytes),
         workers: workers
       }}
    end
  end

  @doc """
  Like `stats/0`, but returns the map or raises `Snakeport.Error`.
  """
  @spec stats!() :: map()
  def stats!, do: unwrap!(stats())

  @doc """
  Describes one session: `:session_id`, `:worker` (index), `:os_pid`, `:owners` (pids),
  `:max_refs`, `:ttl_seconds`, `:tags`, `:created_at` and `:last_access` (Unix ms), `:auto`,
  `:lost`, `:refs` (refs held in Python) and `:python` (the worker's own description).

  Returns `{:error, %Snakeport.Error{reason: :session_not_found}}` for a session the
  harness does not know (never created, or released). Does not adopt the session.
  """
  @spec session_info(session()) :: {:ok, map()} | {:error, Error.t()}
  def session_info(%SessionContext{session_id: id}), do: session_info(id)

  def session_info(session_id) when is_binary(session_id) do
    case Sessions.describe(session_id) do
      {:ok, info, owners, last_access, lost} ->
        base = %{
          session_id: session_id,
          worker: info.index,
          os_pid: info.worker.os_pid,
          owners: owners,
          max_refs: info.max_refs,
          ttl_seconds: info.ttl_seconds,
          tags: info.tags,
          created_at: info.created_at,
          last_access: last_access,
          auto: info.auto,
          lost: lost
        }

        if lost do
          {:ok, Map.merge(base, %{refs: 0, python: nil})}
        else
          request = &{:session_info, &1, session_id}

          case Client.worker_request(info.worker, request, Client.config().call_timeout) do
            {:ok, %{} = py} ->
              {:ok, Map.merge(base, %{refs: Map.get(py, :refs, 0), python: py})}

            {:error, %Error{reason: :session_not_found}} ->
              {:ok, Map.merge(base, %{refs: 0, python: nil})}

            {:error, %Error{reason: :worker_exited}} ->
              {:ok, Map.merge(base, %{refs: 0, python: nil, lost: true})}

            {:ok, other} ->
              {:error, Error.new(:protocol_error, "malformed session info: #{inspect(other)}")}

            error ->
              error
          end
        end

      :not_found ->
        {:error,
         Error.new(
           :session_not_found,
           "no session #{inspect(session_id)} (never created, or released)",
           %{
             session: session_id
           }
         )}

      {:error, _} = error ->
        error
    end
  end

  @doc """
  Like `session_info/1`, but returns the map or raises `Snakeport.Error`.
  """
  @spec session_info!(session()) :: map()
  def session_info!(session), do: unwrap!(session_info(session))

  ## Helpers ---------------------------------------------------------------------------------

  defp ref_to_wire(%Ref{session_id: s, id: id, type: type}), do: {:"$snakeport_ref", s, id, type}

  defp unwrap!(:ok), do: :ok
  defp unwrap!({:ok, value}), do: value
  defp unwrap!({:error, %Error{} = error}), do: raise(error)
end
