defmodule Snakeport.Client do
  @moduledoc false
  # The call path, run in the caller's process: option parsing (which instance, which
  # session, which timeout), the instance's configuration (one :persistent_term read),
  # session checkout, the request through Snakeport.Worker (no process hop on the way out),
  # telemetry, decoding.
  #
  # Which instance a request goes to: the `:instance` option; else the instance of the ref
  # the operation applies to, or of the `:session` context given; else `Snakeport`. A ref
  # or context of another instance (as target, as `:session`, or among the arguments)
  # fails the request with :instance_mismatch.

  alias Snakeport.{
    Error,
    Instance,
    Options,
    Protocol,
    Ref,
    SessionContext,
    Sessions,
    Telemetry,
    Worker
  }

  @call_keys [:kwargs, :session, :timeout, :result, :instance, :placement]
  @attr_keys [:session, :timeout, :result, :instance, :placement]
  @set_keys [:session, :timeout, :instance, :placement]
  @eval_keys [:session, :timeout, :result, :instance, :placement]

  @type parsed :: %{
          kwargs: map(),
          session: String.t() | SessionContext.t() | nil,
          timeout: timeout(),
          req_opts: map(),
          placement: Snakeport.Cluster.placement() | nil
        }

  @type result :: {:ok, term()} | {:error, Error.t()}

  ## Operations ------------------------------------------------------------------------------

  @doc false
  # `batch` (stream options, Snakeport.Streams): nil for a plain call, else the map of
  # batch_size and batch_bytes that makes the worker answer the first batch of the result.
  @spec call(String.t() | atom(), String.t() | atom(), list(), keyword(), map() | nil) :: result()
  def call(module, function, args, opts, batch \\ nil) do
    module = Protocol.name(module)
    function = Protocol.name(function)

    with {:ok, inst, parsed} <- parse(opts, @call_keys, nil),
         {:ok, {args, kwargs}, ref_session, blobs} <-
           Protocol.to_wire({args, parsed.kwargs}, inst.name) do
      request =
        Protocol.call(module, function, args, kwargs, req_opts(parsed, batch))
        |> Protocol.with_blobs(blobs)

      meta = %{op: :call, module: module, function: function}
      run(inst, meta, parsed, nil, ref_session, request)
    end
  end

  @doc false
  @spec method(Ref.t(), String.t() | atom(), list(), keyword(), map() | nil) :: result()
  def method(%Ref{} = ref, name, args, opts, batch \\ nil) do
    name = Protocol.name(name)

    with {:ok, inst, parsed} <- parse(opts, @call_keys, ref),
         {:ok, {args, kwargs}, _, blobs} <- Protocol.to_wire({args, parsed.kwargs}, inst.name) do
      request =
        Protocol.method(Protocol.ref(ref), name, args, kwargs, req_opts(parsed, batch))
        |> Protocol.with_blobs(blobs)

      run(inst, %{op: :method, name: name, type: ref.type}, parsed, ref, nil, request)
    end
  end

  @doc false
  # The next batch of a stream whose iterator is `ref` (Snakeport.Streams).
  @spec iter_next(Ref.t(), keyword(), map()) :: result()
  def iter_next(%Ref{} = ref, opts, batch) do
    with {:ok, inst, parsed} <- parse(opts, @attr_keys, ref) do
      request = Protocol.iter_next(Protocol.ref(ref), req_opts(parsed, batch))
      run(inst, %{op: :iter_next, type: ref.type}, parsed, ref, nil, request)
    end
  end

  defp req_opts(parsed, nil), do: parsed.req_opts
  defp req_opts(parsed, batch), do: Map.merge(parsed.req_opts, batch)

  @doc false
  @spec get_attr(Ref.t() | String.t() | atom(), String.t() | atom(), keyword()) :: result()
  def get_attr(%Ref{} = ref, name, opts) do
    name = Protocol.name(name)

    with {:ok, inst, parsed} <- parse(opts, @attr_keys, ref) do
      request = Protocol.getattr(Protocol.ref(ref), name, parsed.req_opts)
      run(inst, %{op: :getattr, name: name, type: ref.type}, parsed, ref, nil, request)
    end
  end

  def get_attr(module, name, opts) do
    module = Protocol.name(module)
    name = Protocol.name(name)

    with {:ok, inst, parsed} <- parse(opts, @attr_keys, nil) do
      request = Protocol.getattr(Protocol.module_target(module), name, parsed.req_opts)
      run(inst, %{op: :getattr, module: module, name: name}, parsed, nil, nil, request)
    end
  end

  @doc false
  @spec set_attr(Ref.t(), String.t() | atom(), term(), keyword()) :: :ok | {:error, Error.t()}
  def set_attr(%Ref{} = ref, name, value, opts) do
    name = Protocol.name(name)

    with {:ok, inst, parsed} <- parse(opts, @set_keys, ref),
         {:ok, value, _, blobs} <- Protocol.to_wire(value, inst.name),
         request = Protocol.setattr(Protocol.ref(ref), name, value, %{}),
         request = Protocol.with_blobs(request, blobs),
         meta = %{op: :setattr, name: name, type: ref.type},
         {:ok, _} <- run(inst, meta, parsed, ref, nil, request) do
      :ok
    end
  end

  @doc false
  # Snakeport.eval/3: `code` with `bindings` (variable name => value) in the session.
  @spec eval(String.t(), map() | keyword(), keyword()) :: result()
  def eval(code, bindings, opts) when is_binary(code) do
    bindings = bindings!(bindings)

    with {:ok, inst, parsed} <- parse(opts, @eval_keys, nil),
         {:ok, bindings, ref_session, blobs} <- Protocol.to_wire(bindings, inst.name) do
      request = Protocol.eval(code, bindings, parsed.req_opts) |> Protocol.with_blobs(blobs)
      run(inst, %{op: :eval}, parsed, nil, ref_session, request)
    end
  end

  def eval(other, _bindings, _opts),
    do: Options.invalid!(:code, "Python source code (a string)", other)

  # Variable names as strings: binaries, or atoms (not nil/true/false).
  defp bindings!(bindings) when is_map(bindings) and not is_struct(bindings),
    do: Map.new(bindings, fn {k, v} -> {binding_name!(k, bindings), v} end)

  defp bindings!(bindings) when is_list(bindings) do
    if Keyword.keyword?(bindings),
      do: bindings!(Map.new(bindings)),
      else: Options.invalid!(:bindings, "a map or keyword list of variable names", bindings)
  end

  defp bindings!(other),
    do: Options.invalid!(:bindings, "a map or keyword list of variable names", other)

  defp binding_name!(name, _all) when is_binary(name), do: name

  defp binding_name!(name, _all) when is_atom(name) and name not in [nil, true, false],
    do: Atom.to_string(name)

  defp binding_name!(_name, all),
    do: Options.invalid!(:bindings, "a map with string or atom keys", all)

  ## Options ---------------------------------------------------------------------------------

  # The instance and the parsed options. `owner` is the ref the operation applies to (nil).
  defp parse([], _allowed, owner) do
    with {:ok, inst} <- Instance.fetch(instance_of(owner)) do
      {:ok, inst,
       %{kwargs: %{}, session: nil, timeout: inst.call_timeout, req_opts: %{}, placement: nil}}
    end
  end

  defp parse(opts, allowed, owner) when is_list(opts) do
    defaults = [
      kwargs: %{},
      session: nil,
      timeout: nil,
      result: :auto,
      instance: nil,
      placement: nil
    ]

    opts = Keyword.validate!(opts, Keyword.take(defaults, allowed))
    session = session!(opts[:session])
    kwargs = kwargs!(Keyword.get(opts, :kwargs, %{}))
    req_opts = result!(Keyword.get(opts, :result, :auto))
    placement = placement!(opts[:placement])

    with {:ok, name} <- resolve(instance!(opts[:instance]), [owner, session]),
         {:ok, inst} <- Instance.fetch(name) do
      timeout = timeout!(opts[:timeout], inst)

      {:ok, inst,
       %{
         kwargs: kwargs,
         session: session,
         timeout: timeout,
         req_opts: req_opts,
         placement: placement
       }}
    end
  end

  defp parse(other, _allowed, _owner),
    do: raise(ArgumentError, "expected a keyword list of options, got: #{inspect(other)}")

  @doc false
  # The instance and the timeout of release_ref/release_session/session_info/stats.
  # `owner` is the ref or session context the request is about (nil).
  @spec admin(keyword(), Ref.t() | SessionContext.t() | nil) ::
          {:ok, Instance.t(), timeout()} | {:error, Error.t()}
  # Without options (release_ref/1 per ref, the common case): no validation, the owner's
  # instance, its call timeout; the same answer as the general clause below.
  def admin([], owner) do
    with {:ok, name} <- resolve(nil, [owner]),
         {:ok, inst} <- Instance.fetch(name) do
      {:ok, inst, inst.call_timeout}
    end
  end

  def admin(opts, owner) when is_list(opts) do
    opts = Keyword.validate!(opts, timeout: nil, instance: nil)

    with {:ok, name} <- resolve(instance!(opts[:instance]), [owner]),
         {:ok, inst} <- Instance.fetch(name) do
      {:ok, inst, timeout!(opts[:timeout], inst)}
    end
  end

  def admin(other, _owner),
    do: raise(ArgumentError, "expected a keyword list of options, got: #{inspect(other)}")

  defp instance_of(%{instance: name}), do: name
  defp instance_of(_), do: Snakeport

  # The instance named by the :instance option, else by the first owner (a ref or a
  # session context) given; every owner must belong to it.
  # (One owner of a named instance and no :instance option, as for every request about a
  # ref or context without options: that instance, without the list walks below.)
  defp resolve(nil, [%{instance: name}]) when name not in [nil, false], do: {:ok, name}

  defp resolve(given, owners) do
    owners = Enum.filter(owners, &match?(%{instance: _}, &1))
    name = given || Enum.find_value(owners, Snakeport, & &1.instance)

    case Enum.find(owners, &(&1.instance != name)) do
      nil -> {:ok, name}
      owner -> {:error, Instance.mismatch_error(owner, name)}
    end
  end

  defp instance!(nil), do: nil
  defp instance!(name), do: Options.name!(:instance, name)

  defp placement!(nil), do: nil
  defp placement!(placement), do: Snakeport.Cluster.placement!(:placement, placement)

  defp kwargs!(map) when is_map(map) and not is_struct(map), do: map

  defp kwargs!(list) when is_list(list) do
    if Keyword.keyword?(list),
      do: Map.new(list),
      else: Options.invalid!(:kwargs, "a keyword list or a map", list)
  end

  defp kwargs!(other), do: Options.invalid!(:kwargs, "a keyword list or a map", other)

  defp session!(nil), do: nil
  defp session!(id) when is_binary(id) and id != "", do: id
  defp session!(%SessionContext{} = ctx), do: ctx

  defp session!(other),
    do:
      Options.invalid!(
        :session,
        "a session id (string) or a %Snakeport.SessionContext{}",
        other
      )

  defp timeout!(nil, inst), do: inst.call_timeout
  defp timeout!(:infinity, _inst), do: :infinity
  defp timeout!(t, _inst) when is_integer(t) and t >= 0, do: t

  defp timeout!(other, _inst),
    do: Options.invalid!(:timeout, "a non-negative integer or :infinity", other)

  defp result!(:auto), do: %{}
  defp result!(mode) when mode in [:ref, :value, :arrow], do: %{result: mode}
  defp result!(other), do: Options.invalid!(:result, ":auto, :ref, :value or :arrow", other)

  ## The exchange ---------------------------------------------------------------------------

  # Runs one session-bound request. `target` is the ref the operation is applied to (or
  # nil); `ref_session` the session of the first ref in the arguments (or nil); `request`
  # the Snakeport.Protocol request, which gets its id and session when it is sent.
  defp run(inst, meta, parsed, target, ref_session, request) do
    ref_session = if target, do: Ref.session_key(target), else: ref_session

    with {:ok, session} <-
           Sessions.checkout(inst, parsed.session, ref_session, parsed.timeout, parsed.placement),
         :ok <- check_target(target, session) do
      # A call without refs in the process's own auto-session may move to a new one.
      renewable = ref_session == nil

      # Without a handler for the call events (and without :telemetry) no clock is read and
      # no measurement or metadata map is built.
      if Telemetry.listening?([:snakeport, :call]) do
        run_observed(inst, meta, parsed, session, request, renewable)
      else
        exchange(inst, parsed, session, request, renewable)
      end
    end
  end

  defp run_observed(inst, meta, parsed, session, request, renewable) do
    meta =
      Map.merge(meta, %{
        instance: inst.name,
        session_id: session.id,
        worker: session.index,
        node: session.node
      })

    start = System.monotonic_time()

    Telemetry.execute(
      [:snakeport, :call, :start],
      %{system_time: System.system_time(), monotonic_time: start},
      meta
    )

    result = exchange(inst, parsed, session, request, renewable)
    stop = System.monotonic_time()

    case result do
      {:ok, _} ->
        Telemetry.execute(
          [:snakeport, :call, :stop],
          %{duration: stop - start, monotonic_time: stop},
          meta
        )

      {:error, error} ->
        Telemetry.execute(
          [:snakeport, :call, :exception],
          %{duration: stop - start, monotonic_time: stop},
          Map.merge(meta, %{kind: :error, reason: error})
        )
    end

    result
  end

  defp exchange(inst, parsed, session, request, renewable) do
    case Worker.request(session.worker, request, session.id, parsed.timeout) do
      {:ok, frame} ->
        case Protocol.decode_reply(frame, inst.name, session.ref_worker) do
          {:error, %Error{reason: :session_not_found}} = error ->
            # The session is not open in the worker: re-open it there if the harness
            # still has it; the error goes to the caller either way.
            Sessions.reopen(inst, session, parsed.timeout)
            error

          decoded ->
            decoded
        end

      # The request could not be written: the auto-session's worker is gone, and the store
      # has not marked the session lost yet. Nothing ran: retry once in a new auto-session.
      # ({:down, :noproc}: a worker of another node that was gone before the request.)
      {:error, reason} when reason in [:noproc, :port_closed, {:down, :noproc}] and renewable ->
        if Sessions.own_auto?(inst.name, session.id) do
          case Sessions.renew_auto(inst, session.id, parsed.timeout) do
            {:ok, renewed} -> exchange(inst, parsed, renewed, request, false)
            error -> error
          end
        else
          {:error, transport_error(reason, session, parsed.timeout)}
        end

      {:error, reason} ->
        {:error, transport_error(reason, session, parsed.timeout)}
    end
  end

  defp check_target(nil, _session), do: :ok
  defp check_target(%Ref{session_id: id}, %{id: id}), do: :ok

  defp check_target(%Ref{} = ref, session) do
    {:error,
     Error.new(
       :session_mismatch,
       "#{inspect(ref)} belongs to session #{inspect(ref.session_id)}, but this call runs in " <>
         "session #{inspect(session.id)}. Refs are only valid in their own session: adopt it " <>
         "with SessionContext.with_session([session_id: #{inspect(ref.session_id)}], fun) " <>
         "or pass session: #{inspect(ref.session_id)}.",
       %{ref_session: ref.session_id, session: session.id}
     )}
  end

  ## Requests outside the call path ------------------------------------------------------------

  @doc false
  # Sends `request` (for session `session`, nil when it is not about one) to the worker of
  # `entry`, waits up to `timeout` for the reply and decodes it. A worker that is gone or
  # dies meanwhile gives :worker_exited (no session is marked lost here).
  @spec worker_request(Worker.entry(), Protocol.request(), String.t() | nil, timeout()) ::
          result()
  def worker_request(entry, request, session, timeout) do
    case Worker.send_request(entry, request, session) do
      {:ok, handle} -> await_reply(entry, handle, timeout)
      {:error, reason} -> {:error, transport_error(reason, nil, timeout)}
    end
  end

  @doc false
  # Waits for and decodes the reply of a request sent with Worker.send_request/3 (so that
  # several requests can be in flight at once).
  @spec await_reply(Worker.entry(), Worker.handle(), timeout()) :: result()
  def await_reply(entry, handle, timeout) do
    case Worker.await(handle, timeout) do
      {:ok, frame} -> Protocol.decode_reply(frame, entry.instance, entry.index)
      {:error, reason} -> {:error, transport_error(reason, nil, timeout)}
    end
  end

  @doc false
  # The error for a request that could not be written or answered: `session` is the
  # session it ran in (nil when it was not about one), `timeout` the bound it had.
  @spec transport_error(term(), Sessions.info() | nil, timeout() | nil) :: Error.t()
  def transport_error(:noproc, %{} = session, _timeout), do: Sessions.lost_error(session)
  def transport_error({:down, :noproc}, %{} = session, _timeout), do: Sessions.lost_error(session)

  def transport_error(:timeout, session, timeout) do
    Error.new(
      :timeout,
      "the Python call did not answer within #{timeout} ms; the worker was asked to cancel it",
      %{timeout: timeout, worker: session && session.index}
    )
  end

  def transport_error({:frame_too_large, size, limit}, _session, _timeout) do
    Error.new(
      :frame_too_large,
      "the request is #{size} bytes, above the worker's frame limit of #{limit} bytes " <>
        "(option :max_frame_bytes)",
      %{size: size, limit: limit}
    )
  end

  # A worker of another node, whose node went down or was disconnected.
  def transport_error({:down, :noconnection}, session, _timeout) do
    node = session && Map.get(session, :node)

    Error.new(
      :worker_exited,
      "the connection to the worker's node#{if node, do: " " <> inspect(node), else: ""} was " <>
        "lost (it went down or was disconnected) while this request was in flight" <>
        if(session, do: "; session #{inspect(session.id)} is lost", else: ""),
      %{reason: :noconnection, node: node, worker: session && session.index}
    )
  end

  def transport_error(reason, session, _timeout) do
    {why, details} =
      case reason do
        {:down, {:shutdown, {:python_exited, status}}} ->
          {"the Python process exited with status #{status}", %{exit_status: status}}

        {:down, {:shutdown, {:stuck_killed, status}}} ->
          {"the worker was stuck (a request it was asked to cancel did not end within " <>
             ":cancel_grace, nor in the :stuck_timeout that followed) and was killed",
           %{exit_status: status, stuck: true}}

        {:down, other} ->
          {"the worker stopped (#{inspect(other)})", %{reason: other}}

        other ->
          {"the worker is not running (#{inspect(other)})", %{reason: other}}
      end

    Error.new(
      :worker_exited,
      "#{why} while this request was in flight; the worker is being restarted" <>
        if(session, do: " and session #{inspect(session.id)} is lost", else: ""),
      Map.put(details, :worker, session && session.index)
    )
  end
end
