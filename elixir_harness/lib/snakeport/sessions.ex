defmodule Snakeport.Sessions do
  @moduledoc false
  # The caller side of an instance's session store (Snakeport.Sessions.Server is the store,
  # as Registry is to Registry.Partition): everything here runs in the calling process.
  #
  # A call that uses the same session as the process's previous one (the usual case) reads
  # no table: the process caches that session's row in its dictionary, valid while the
  # instance's epoch (one :atomics counter, bumped by the store after every row it adds,
  # removes or marks lost) has not moved. Otherwise it finds its session with one ETS
  # lookup and, when the process already owns it, sends nothing to the store (the owners
  # table is read only when the row is not the cached session's). Only a first use
  # (adoption, creation) asks the store, bounded by the call's own timeout.
  #
  # Also here: Snakeport.release_session/2, Snakeport.release_ref/2 and
  # Snakeport.session_info/2, which talk to the store and to the session's worker.

  alias Snakeport.{Client, Defaults, Error, Instance, Pool, Protocol, Ref, SessionContext, Worker}
  alias Snakeport.Sessions.Server

  @auto_key :"$snakeport_auto_sessions"
  @owned_key :"$snakeport_owned_session"
  @touch_granularity Defaults.touch_granularity()
  @store_timeout Defaults.store_timeout()

  @type info :: Server.info()

  ## Checkout ----------------------------------------------------------------------------------

  @doc false
  # Resolves the session a request to instance `inst` runs in, adopting it (the caller
  # becomes an owner):
  #
  #   1. the `:session` option, when given;
  #   2. else the process's current SessionContext of that instance;
  #   3. else the session of the refs the request uses (only if that session still exists:
  #      a released one answers :ref_released instead of being re-created); `ref_session`
  #      is its id, or `{id, node}` for refs of a session of another node (Ref.session_key/1);
  #   4. else the process's auto-session of that instance (one per `placement`: a call
  #      that names one runs where it says); when that was lost (its worker died), a new one.
  #
  # `timeout` bounds the wait for the session store when the session has to be adopted (the
  # call's own timeout: the store's answer is part of the call). `placement` (nil: the
  # instance's) places a session that this request creates (Snakeport.Cluster.place/2).
  @spec checkout(
          Instance.t(),
          String.t() | SessionContext.t() | nil,
          String.t() | {String.t(), node()} | nil,
          timeout(),
          Snakeport.Cluster.placement() | nil
        ) :: {:ok, info()} | {:error, Error.t()}
  def checkout(inst, explicit, ref_session, timeout, placement \\ nil) do
    cond do
      explicit != nil ->
        ensure(inst, explicit, creating(true, placement), timeout)

      ctx = SessionContext.current(inst.name) ->
        ensure(inst, ctx, creating(true, placement), timeout)

      ref_session != nil ->
        ensure_ref(inst, ref_session, timeout)

      true ->
        auto(inst, placement, timeout)
    end
  end

  # How a session that is missing is made: `true` (an explicit id), `:auto`, `false` (the
  # session of refs: never created), `{:ref, node}` (refs of a session of another node),
  # `{true | :auto, placement}` (created where `placement` says).
  defp creating(create, nil), do: create
  defp creating(create, placement), do: {create, placement}

  defp ensure_ref(inst, {id, node}, timeout), do: ensure(inst, id, {:ref, node}, timeout)
  defp ensure_ref(inst, id, timeout), do: ensure(inst, id, false, timeout)

  # The process's auto-session. A lost one (its worker died and the store marked it lost)
  # is replaced by a new auto-session on a live worker; the lost row is kept for its refs.
  # (A worker that died before the store handled its :DOWN is found by the request itself,
  # which cannot be written: the caller then renews the session with renew_auto/3.)
  defp auto(inst, placement, timeout) do
    key = auto_key(inst.name, placement)
    id = auto_id(key)

    case ensure(inst, id, creating(:auto, placement), timeout) do
      {:error, %Error{reason: :session_lost, details: %{session: ^id}}} ->
        renew_auto(inst, id, timeout)

      other ->
        other
    end
  end

  # The key of an auto-session in the process's map: the instance, or {instance, placement}.
  defp auto_key(name, nil), do: name
  defp auto_key(name, placement), do: {name, placement}

  @doc false
  # Whether `id` is one of the calling process's auto-sessions of instance `name`.
  @spec own_auto?(atom(), String.t()) :: boolean()
  def own_auto?(name, id) do
    case Process.get(@auto_key) do
      %{^name => ^id} -> true
      %{} = ids -> Enum.any?(ids, &match?({{^name, _}, ^id}, &1))
      nil -> false
    end
  end

  @doc false
  # Replaces the process's auto-session `old_id` (lost with its worker) by a new one, placed
  # as the old one was.
  @spec renew_auto(Instance.t(), String.t(), timeout()) :: {:ok, info()} | {:error, Error.t()}
  def renew_auto(inst, old_id, timeout) do
    name = inst.name
    ids = Process.get(@auto_key) || %{}

    key =
      Enum.find_value(ids, name, fn
        {{^name, _} = key, ^old_id} -> key
        {^name, ^old_id} -> name
        _ -> nil
      end)

    if Map.get(ids, key) == old_id, do: Process.put(@auto_key, Map.delete(ids, key))

    placement =
      case key do
        {_name, placement} -> placement
        _ -> nil
      end

    ensure(inst, auto_id(key), creating(:auto, placement), timeout)
  end

  @doc false
  # The process's auto-session id under `key` (the instance name, or {name, placement}),
  # created on first use. Unique in the cluster: a distributed node adds its name.
  @spec auto_id(atom() | {atom(), term()}) :: String.t()
  def auto_id(key) do
    case Process.get(@auto_key) do
      %{^key => id} ->
        id

      ids ->
        id = new_id("auto-")
        Process.put(@auto_key, Map.put(ids || %{}, key, id))
        id
    end
  end

  @doc false
  # A new session id with `prefix`, unique in the cluster: `prefix` and an integer unique
  # in this VM, then `@` and the node's name on a distributed node (ids chosen on two nodes
  # never meet in one session).
  @spec new_id(String.t()) :: String.t()
  def new_id(prefix) do
    id = prefix <> Integer.to_string(System.unique_integer([:positive]))
    if node() == :nonode@nohost, do: id, else: id <> "@" <> Atom.to_string(node())
  end

  defp ensure(inst, %SessionContext{session_id: id, instance: name} = ctx, create, timeout)
       when name == inst.name do
    limits = %{
      max_refs: ctx.max_refs,
      ttl_seconds: ctx.ttl_seconds,
      tags: ctx.tags,
      overflow: ctx.overflow
    }

    # The context's placement, when it has one, is its session's.
    create = if ctx.placement, do: {true, ctx.placement}, else: create
    fast(inst, id, limits, create, timeout)
  end

  defp ensure(inst, %SessionContext{} = ctx, _create, _timeout),
    do: {:error, Instance.mismatch_error(ctx, inst.name)}

  defp ensure(inst, id, create, timeout) when is_binary(id),
    do: fast(inst, id, nil, create, timeout)

  defp ensure(_inst, other, _create, _timeout) do
    {:error,
     Error.new(
       :bad_argument,
       "expected a session id (string) or %Snakeport.SessionContext{}, got: #{inspect(other)}"
     )}
  end

  # The process's last checked-out session is cached in its dictionary as
  # {epoch counter, id, epoch, info, touched}: while the instance's epoch (bumped by the
  # store after every row it adds, removes or marks lost) has not moved, the row is still
  # there, owned by this process (owner rows go only with the session or the process), not
  # lost, with the same info (a row's info never changes): no table is read. `touched` is
  # when this process last wrote the row's last access (at most every touch granularity).
  defp fast(%{epoch: counter} = inst, id, limits, create, timeout) do
    epoch = :atomics.get(counter, 1)

    case Process.get(@owned_key) do
      {^counter, ^id, ^epoch, info, touched} when limits == nil ->
        touch_cached(inst, id, epoch, info, touched)

      {^counter, ^id, ^epoch, info, touched} ->
        with :ok <- conflict(info, limits), do: touch_cached(inst, id, epoch, info, touched)

      cached ->
        slow(inst, id, limits, create, timeout, epoch, cached)
    end
  end

  # The epoch is read before the row: a change after the read leaves the cache stale.
  defp slow(inst, id, limits, create, timeout, epoch, cached) do
    case :ets.lookup(inst.sessions, id) do
      [{^id, info, last, lost, _ttl}] ->
        cond do
          not owner?(inst, id, info, cached) -> adopt(inst, id, limits, create, timeout)
          lost -> {:error, lost_error(info)}
          limits != nil and conflict(info, limits) != :ok -> conflict(info, limits)
          true -> {:ok, remember(inst, id, epoch, info, touch(inst, id, last))}
        end

      [] ->
        adopt(inst, id, limits, create, timeout)
    end
  rescue
    ArgumentError -> {:error, Instance.not_started(inst.name)}
  end

  # Whether the caller owns the session of this row: it does when its cache holds that
  # session (`gen` is unique per created session): owner rows are only added by the
  # process's own adopt, and removed only when the session is dropped (a new session with
  # that id has a new gen) or the process dies. Otherwise one lookup of the owners table.
  defp owner?(%{epoch: counter} = inst, id, %{gen: gen}, cached) do
    case cached do
      {^counter, ^id, _epoch, %{gen: ^gen}, _touched} -> true
      _ -> :ets.member(inst.owners, {id, self()})
    end
  end

  # Just adopted: owned, but the epoch of the row is not known (the store wrote it before
  # it answered): the next checkout reads the row (without the owners table).
  defp owned(inst, id, info), do: remember(inst, id, nil, info, 0)

  defp remember(%{epoch: counter}, id, epoch, info, touched) do
    Process.put(@owned_key, {counter, id, epoch, info, touched})
    info
  end

  # The row's last access, refreshed when it is older than the touch granularity; returns
  # it.
  defp touch(inst, id, last) do
    now = System.monotonic_time(:millisecond)

    if now - last >= @touch_granularity do
      :ets.update_element(inst.sessions, id, {3, now})
      now
    else
      last
    end
  end

  defp touch_cached(inst, id, epoch, info, touched) do
    now = System.monotonic_time(:millisecond)

    if now - touched >= @touch_granularity do
      :ets.update_element(inst.sessions, id, {3, now})
      remember(inst, id, epoch, info, now)
    end

    {:ok, info}
  rescue
    ArgumentError -> {:error, Instance.not_started(inst.name)}
  end

  # A first use of session `id` by this process: adopted where it lives (its home), or
  # created where its placement says.
  defp adopt(inst, id, limits, how, timeout) do
    {create, placement} =
      case how do
        {:ref, _node} -> {false, nil}
        {create, placement} -> {create, placement}
        create -> {create, nil}
      end

    case home(inst, id, how, create, placement, timeout) do
      {:ok, node} when node == node() -> local_adopt(inst, id, limits, create, timeout)
      {:ok, node} -> remote_adopt(inst, node, id, limits, create, timeout)
      {:error, %Error{}} = error -> error
    end
  end

  # Where session `id` lives or goes: the node of its row here (its home, or the home a
  # route names), of its refs, else of another node that has it (an explicit id), else
  # where `placement` puts it.
  defp home(inst, id, how, create, placement, timeout) do
    case :ets.lookup(inst.sessions, id) do
      [{^id, %{node: node}, _, _, _}] ->
        {:ok, node}

      [] ->
        case how do
          {:ref, node} ->
            {:ok, node}

          false ->
            {:ok, node()}

          _ when create == true ->
            case Snakeport.Cluster.locate(inst, id, timeout) do
              {:ok, node} -> {:ok, node}
              :not_found -> place(inst, placement)
            end

          _ ->
            place(inst, placement)
        end
    end
  end

  # A placement that finds no node at all under the default policies leaves the answer to
  # this node's store (:no_workers, as on a single node).
  defp place(inst, placement) do
    case Snakeport.Cluster.place(inst, placement) do
      {:ok, node} ->
        {:ok, node}

      {:error, _} = error ->
        if (placement || inst.placement) in [:local, :any], do: {:ok, node()}, else: error
    end
  end

  defp local_adopt(inst, id, limits, create, timeout) do
    case Server.adopt(inst.server, id, self(), limits, create, timeout) do
      {:ok, info, lost} ->
        owned(inst, id, info)
        if lost, do: {:error, lost_error(info)}, else: {:ok, info}

      # A route appeared meanwhile: its home adopts.
      {:remote, info} ->
        remote_adopt(inst, info.node, id, limits, create, timeout)

      {:error, :not_found} ->
        {:error, released_error(id)}

      {:error, %Error{} = error} ->
        {:error, error}
    end
  catch
    :exit, reason -> {:error, exit_error(inst, reason, timeout)}
  end

  # Adoption by the store of the session's home `node`, which monitors this process from
  # there (and creates the session when `create` allows, on one of its own workers); then
  # this node's store keeps the route.
  defp remote_adopt(inst, node, id, limits, create, timeout, hops \\ 1) do
    if node in Node.list() do
      case GenServer.call({inst.server, node}, {:adopt, id, self(), limits, create}, timeout) do
        {:ok, info, lost} ->
          route(inst, node, info, lost, timeout)

        # That node routes to another one (its home): once.
        {:remote, %{node: home}} when hops > 0 and home != node ->
          if home == node(),
            do: local_adopt(inst, id, limits, create, timeout),
            else: remote_adopt(inst, home, id, limits, create, timeout, hops - 1)

        {:remote, _} ->
          {:error, node_down_error(inst, id, node, create)}

        {:error, :not_found} ->
          {:error, released_error(id)}

        {:error, %Error{}} = error ->
          error
      end
    else
      {:error, node_down_error(inst, id, node, create)}
    end
  catch
    :exit, {:timeout, _} = reason -> {:error, exit_error(inst, reason, timeout)}
    :exit, _reason -> {:error, node_down_error(inst, id, node, create)}
  end

  defp route(inst, node, info, lost, timeout) do
    info = %{
      info
      | worker: Snakeport.Cluster.remote_entry(info.worker, node),
        ref_worker: {info.index, node}
    }

    case Server.route(inst.server, info, self(), lost, timeout) do
      :ok ->
        owned(inst, info.id, info)
        if lost, do: {:error, lost_error(info)}, else: {:ok, info}

      {:error, %Error{}} = error ->
        error
    end
  catch
    :exit, reason -> {:error, exit_error(inst, reason, timeout)}
  end

  defp released_error(id) do
    Error.new(
      :ref_released,
      "the ref's session #{inspect(id)} was released (its owners died, it was released " <>
        "explicitly, or its TTL passed); its refs are gone",
      %{cause: :session_released, session: id}
    )
  end

  # Session `id` lives (or was to be created) on `node`, which is not connected, or does
  # not run the instance.
  defp node_down_error(inst, id, node, false) do
    Error.new(
      :session_lost,
      "session #{inspect(id)} lives on node #{inspect(node)}, which is down, disconnected " <>
        "or not running #{inspect(inst.name)}: its Python objects are gone",
      %{session: id, node: node}
    )
  end

  defp node_down_error(inst, id, node, _create) do
    Error.new(
      :no_workers,
      "session #{inspect(id)} was to be opened on node #{inspect(node)}, which is down, " <>
        "disconnected or not running #{inspect(inst.name)}",
      %{session: id, node: node}
    )
  end

  @doc false
  # Whether this node's store holds session `id` of instance `name` as its own (not a
  # route): asked by the other nodes (Snakeport.Cluster.locate/3).
  @spec home?(atom(), String.t()) :: boolean()
  def home?(name, id) do
    with {:ok, inst} <- Instance.fetch(name),
         [{^id, %{node: node}, _, _, _}] <- :ets.lookup(inst.sessions, id) do
      node == node()
    else
      _ -> false
    end
  rescue
    ArgumentError -> false
  end

  @doc false
  # Whether the limits a later opener states (`limits`: nil, or a map of :max_refs,
  # :ttl_seconds, :tags, :overflow whose nil values, and empty tags, mean "not stated")
  # match those of the session `info`: :ok, or {:error, :session_options_conflict}.
  # A session's limits are set by its creator; a differing request is refused, never
  # silently ignored.
  @spec conflict(info(), map() | nil) :: :ok | {:error, Error.t()}
  def conflict(_info, nil), do: :ok

  def conflict(info, limits) do
    differing =
      Enum.flat_map(limits, fn {key, want} ->
        have = Map.get(info, key)

        if want == nil or (key == :tags and want == %{}) or have == want,
          do: [],
          else: [{key, have, want}]
      end)

    case differing do
      [] ->
        :ok

      _ ->
        what =
          Enum.map_join(differing, ", ", fn {key, have, want} ->
            "#{key}: #{inspect(have)} (asked: #{inspect(want)})"
          end)

        {:error,
         Error.new(
           :session_options_conflict,
           "session #{inspect(info.id)} already exists with #{what}. A session's limits are " <>
             "set when it is created: leave these options out to use the session as it is, " <>
             "or release it (Snakeport.release_session/2, SessionStore.delete_session/2) " <>
             "and create it again with the new ones.",
           %{
             session: info.id,
             conflicts: Map.new(differing, fn {key, have, want} -> {key, {have, want}} end)
           }
         )}
    end
  end

  @doc false
  # Called when the worker answered a request of session `info` with :session_not_found. The
  # worker only knows opened sessions, so this means the session is not open there: either
  # the harness released it too (the request crossed its release_session: nothing to do,
  # the caller gets the error), or the worker lost it while the harness still has the row
  # (e.g. a Snakeport.release_session/2 of an id the harness did not know, sent to every
  # worker, reached this one after a new session with that id was opened). In that case the
  # session is opened again in the worker (with empty refs), so that the harness never
  # believes in a session that the worker does not have; the failed request is not retried.
  @spec reopen(Instance.t(), info(), timeout()) :: :ok | :not_found | {:error, Error.t()}
  def reopen(inst, %{node: node} = info, timeout) when node != node() do
    # A route: the session's home reopens it; a home that no longer has it (it released
    # it, and its word has not arrived yet) drops the route now.
    case Server.reopen({inst.server, node}, info.id, info.gen, timeout) do
      :not_found ->
        Server.forget_route(inst.server, info.id, info.gen)
        :not_found

      other ->
        other
    end
  catch
    :exit, _ -> :not_found
  end

  def reopen(inst, info, timeout) do
    Server.reopen(inst.server, info.id, info.gen, timeout)
  catch
    :exit, _ -> :not_found
  end

  @doc false
  # Creates a store session (Snakeport.SessionStore): see Server.create/6. In a cluster, an
  # id that another node has is that node's (:already_exists, or its session for
  # :get_or_create); a new one goes where `placement` says, created by that node's store.
  @spec create(
          Instance.t(),
          String.t(),
          pid() | nil,
          map(),
          :create | :get_or_create,
          timeout(),
          Snakeport.Cluster.placement() | nil
        ) :: {:ok, info(), boolean()} | {:error, :already_exists | Error.t()}
  def create(inst, id, keeper, limits, mode, timeout, placement \\ nil) do
    node =
      case where(inst, id, timeout) do
        {:remote, node} -> {:ok, node}
        :here -> {:ok, node()}
        :unknown -> place(inst, placement)
      end

    case node do
      {:ok, node} ->
        server = if node == node(), do: inst.server, else: {inst.server, node}

        case Server.create(server, id, keeper, limits, mode, timeout) do
          {:remote, %{node: home}} when node == node() ->
            Server.create({inst.server, home}, id, keeper, limits, mode, timeout)

          other ->
            other
        end

      {:error, _} = error ->
        error
    end
  catch
    :exit, {:timeout, _} = reason -> {:error, exit_error(inst, reason, timeout)}
    :exit, reason -> {:error, exit_error(inst, reason, timeout)}
  end

  @doc false
  # Where session `id` lives, for the requests that its home answers (SessionStore,
  # session_info, release_session): :here, {:remote, node} (a route here, or another node
  # has it, Snakeport.Cluster.locate/3), or :unknown.
  @spec where(Instance.t(), String.t(), timeout()) :: :here | {:remote, node()} | :unknown
  def where(inst, id, timeout) do
    case :ets.lookup(inst.sessions, id) do
      [{^id, %{node: node}, _, _, _}] when node == node() ->
        :here

      [{^id, %{node: node}, _, _, _}] ->
        {:remote, node}

      [] ->
        case Snakeport.Cluster.locate(inst, id, timeout) do
          {:ok, node} -> {:remote, node}
          :not_found -> :unknown
        end
    end
  rescue
    ArgumentError -> :unknown
  end

  @doc false
  # Runs `fun(args)` of the public API on `node`, the home of what it is about, bounded by
  # `timeout` (plus a margin for the hop). A node that is gone gives `down`.
  @spec at(node(), module(), atom(), list(), timeout(), term()) :: term()
  def at(node, module, fun, args, timeout, down) do
    wait = if timeout == :infinity, do: :infinity, else: timeout + 1_000

    if node in Node.list() do
      :erpc.call(node, module, fun, args, wait)
    else
      down
    end
  catch
    :error, {:erpc, :timeout} ->
      {:error,
       Error.new(:timeout, "node #{inspect(node)} did not answer within #{timeout} ms", %{
         timeout: timeout,
         node: node
       })}

    :error, {:erpc, _} ->
      down

    :exit, {{:nodedown, _}, _} ->
      down
  end

  @doc false
  # The session row, refreshing its last access (SessionStore.get_session/2): a store
  # session that is looked up is in use.
  @spec touch(Instance.t(), String.t()) ::
          {:ok, info(), boolean(), integer()} | :not_found | {:error, Error.t()}
  def touch(inst, id) do
    case :ets.lookup(inst.sessions, id) do
      [{^id, info, _last, lost, _ttl}] ->
        now = System.monotonic_time(:millisecond)
        :ets.update_element(inst.sessions, id, {3, now})
        {:ok, info, lost, System.system_time(:millisecond)}

      [] ->
        :not_found
    end
  rescue
    ArgumentError -> {:error, Instance.not_started(inst.name)}
  end

  @doc false
  # The value of `key` in the state of session `id` (kept for the session's life).
  @spec get_state(Instance.t(), String.t(), term()) ::
          {:ok, term()} | {:error, :not_found | Error.t()}
  def get_state(inst, id, key) do
    with {:ok, gen} <- gen_of(inst, id),
         [{_, ^gen, value}] <- :ets.lookup(inst.state, {id, key}) do
      {:ok, value}
    else
      {:error, _} = error -> error
      _ -> {:error, :not_found}
    end
  rescue
    ArgumentError -> {:error, Instance.not_started(inst.name)}
  end

  @doc false
  # Sets `key` in the state of session `id`. The store drops a session's state when it
  # drops the row; a write that raced with that is undone here (the row is checked again
  # after the write), so no state outlives its session.
  @spec put_state(Instance.t(), String.t(), term(), term()) ::
          :ok | {:error, :not_found | Error.t()}
  def put_state(inst, id, key, value) do
    with {:ok, gen} <- gen_of(inst, id) do
      :ets.insert(inst.state, {{id, key}, gen, value})

      case gen_of(inst, id) do
        {:ok, ^gen} ->
          :ok

        _ ->
          :ets.delete_object(inst.state, {{id, key}, gen, value})
          {:error, :not_found}
      end
    end
  rescue
    ArgumentError -> {:error, Instance.not_started(inst.name)}
  end

  @doc false
  # Removes `key` from the state of session `id` (idempotent).
  @spec delete_state(Instance.t(), String.t(), term()) :: :ok | {:error, Error.t()}
  def delete_state(inst, id, key) do
    :ets.delete(inst.state, {id, key})
    :ok
  rescue
    ArgumentError -> {:error, Instance.not_started(inst.name)}
  end

  defp gen_of(inst, id) do
    case :ets.lookup(inst.sessions, id) do
      [{^id, %{gen: gen}, _last, _lost, _ttl}] -> {:ok, gen}
      [] -> {:error, :not_found}
    end
  end

  @doc false
  # The session row, without adopting it.
  @spec lookup(Instance.t(), String.t()) ::
          {:ok, info(), boolean()} | :not_found | {:error, Error.t()}
  def lookup(inst, id) do
    case :ets.lookup(inst.sessions, id) do
      [{^id, info, _last, lost, _ttl}] -> {:ok, info, lost}
      [] -> :not_found
    end
  rescue
    ArgumentError -> {:error, Instance.not_started(inst.name)}
  end

  ## Releases and descriptions -------------------------------------------------------------------

  @doc false
  # Snakeport.release_session/2: the store forgets the session and has it released in its
  # worker (the release happens even if this process dies meanwhile), then answers the
  # worker's count. An id the store does not know is released in every worker (idempotent
  # there), in case one still holds it.
  @spec release_session(Instance.t(), String.t(), timeout()) ::
          {:ok, non_neg_integer()} | {:error, Error.t()}
  def release_session(inst, session_id, timeout) do
    case Server.release(inst.server, session_id, timeout) do
      {:ok, n} ->
        {:ok, n}

      {:error, %Error{}} = error ->
        error

      # A route: its home releases it; the route goes now (the home's word follows).
      {:remote, info} ->
        result = release_at(inst, info.node, session_id, timeout)
        Server.forget_route(inst.server, session_id, info.gen)
        result

      :not_found ->
        case Snakeport.Cluster.locate(inst, session_id, timeout) do
          {:ok, node} -> release_at(inst, node, session_id, timeout)
          :not_found -> release_everywhere(inst, session_id, timeout)
        end
    end
  catch
    :exit, reason -> {:error, exit_error(inst, reason, timeout)}
  end

  # The session's home releases it; a home that is gone took its objects along.
  defp release_at(inst, node, session_id, timeout) do
    case GenServer.call({inst.server, node}, {:release, session_id}, timeout) do
      {:ok, n} -> {:ok, n}
      {:error, %Error{}} = error -> error
      _not_found_or_route -> {:ok, 0}
    end
  catch
    :exit, {:timeout, _} = reason -> {:error, exit_error(inst, reason, timeout)}
    :exit, _ -> {:ok, 0}
  end

  defp release_everywhere(inst, session_id, timeout) do
    inst.pool_table
    |> Pool.entries()
    |> Enum.map(&{&1, Worker.send_request(&1, Protocol.release_session(), session_id)})
    |> Enum.map(fn {entry, sent} -> released_in(entry, sent, timeout) end)
    |> Enum.reduce({:ok, 0}, fn
      {:ok, n}, {:ok, total} -> {:ok, total + n}
      _, acc -> acc
    end)
  end

  defp released_in(entry, {:ok, handle}, timeout) do
    case Protocol.released_count(Client.await_reply(entry, handle, timeout)) do
      {:error, %Error{reason: :worker_exited}} -> {:ok, 0}
      other -> other
    end
  end

  defp released_in(_entry, {:error, _reason}, _timeout), do: {:ok, 0}

  @doc false
  # Snakeport.release_ref/2 (idempotent: a ref of a released or lost session is released).
  @spec release_ref(Instance.t(), Ref.t(), timeout()) :: :ok | {:error, Error.t()}
  def release_ref(inst, %Ref{session_id: sid} = ref, timeout) do
    case lookup(inst, sid) do
      {:ok, info, false} ->
        request = Protocol.release_ref(Protocol.ref(ref))

        case Protocol.released_ref(Client.worker_request(info.worker, request, sid, timeout)) do
          {:ok, _released} -> :ok
          {:error, %Error{reason: r}} when r in [:session_not_found, :ref_not_found] -> :ok
          {:error, %Error{reason: :worker_exited}} -> :ok
          error -> error
        end

      {:ok, _info, true} ->
        :ok

      # Not used on this node: the ref's own node releases it.
      :not_found ->
        remote_ref(ref, fn node ->
          at(
            node,
            Snakeport,
            :release_ref,
            [ref, [instance: inst.name, timeout: timeout]],
            timeout,
            :ok
          )
        end)

      {:error, _} = error ->
        error
    end
  end

  defp remote_ref(%Ref{node: node}, fun) when node != nil and node != node(), do: fun.(node)
  defp remote_ref(_ref, _fun), do: :ok

  @doc false
  # Ends a stream early (Snakeport.Streams): the worker closes the iterator behind `ref` (a
  # generator's finally runs) and releases it. Without adopting the session; idempotent (a
  # ref, or a session, that is gone is fine).
  @spec close_iter(Instance.t(), Ref.t(), timeout()) :: :ok | {:error, Error.t()}
  def close_iter(inst, %Ref{session_id: sid} = ref, timeout) do
    case lookup(inst, sid) do
      {:ok, info, false} ->
        request = Protocol.iter_close(Protocol.ref(ref))

        case Protocol.released_ref(Client.worker_request(info.worker, request, sid, timeout)) do
          {:ok, _released} -> :ok
          {:error, %Error{reason: r}} when r in [:session_not_found, :worker_exited] -> :ok
          error -> error
        end

      {:ok, _info, true} ->
        :ok

      :not_found ->
        remote_ref(ref, fn node ->
          at(node, __MODULE__, :close_iter_here, [inst.name, ref, timeout], timeout, :ok)
        end)

      {:error, _} = error ->
        error
    end
  end

  @doc false
  # close_iter/3 on the ref's own node (asked by another node).
  def close_iter_here(name, ref, timeout) do
    with {:ok, inst} <- Instance.fetch(name), do: close_iter(inst, ref, timeout)
  end

  @doc false
  # Snakeport.session_info/2: the store's record and the worker's own description.
  @spec info(Instance.t(), String.t(), timeout()) :: {:ok, map()} | {:error, Error.t()}
  def info(inst, session_id, timeout) do
    case Server.describe(inst.server, session_id, @store_timeout) do
      {:ok, info, owners, last_access, lost} ->
        base = %{
          session_id: session_id,
          instance: inst.name,
          node: node(),
          worker: info.index,
          os_pid: info.worker.os_pid,
          owners: owners,
          max_refs: info.max_refs,
          ttl_seconds: info.ttl_seconds,
          tags: info.tags,
          overflow: info.overflow,
          kind: info.kind,
          created_at: info.created_at,
          last_access: last_access,
          auto: info.auto,
          lost: lost
        }

        if lost,
          do: {:ok, Map.merge(base, %{refs: 0, python: nil})},
          else: python_info(base, info, timeout)

      # A route: its home describes it.
      {:remote, %{node: node}} ->
        info_at(inst, node, session_id, timeout)

      :not_found ->
        case Snakeport.Cluster.locate(inst, session_id, timeout) do
          {:ok, node} -> info_at(inst, node, session_id, timeout)
          :not_found -> {:error, not_found_error(session_id)}
        end
    end
  catch
    :exit, reason -> {:error, exit_error(inst, reason, @store_timeout)}
  end

  defp info_at(inst, node, session_id, timeout) do
    args = [session_id, [instance: inst.name, timeout: timeout]]
    at(node, Snakeport, :session_info, args, timeout, {:error, not_found_error(session_id)})
  end

  defp not_found_error(session_id) do
    Error.new(
      :session_not_found,
      "no session #{inspect(session_id)} (never created, or released)",
      %{session: session_id}
    )
  end

  defp python_info(base, info, timeout) do
    reply = Client.worker_request(info.worker, Protocol.session_info(), info.id, timeout)

    case Protocol.session_info_map(:session_info, reply) do
      {:ok, py} ->
        {:ok, Map.merge(base, %{refs: py.refs, python: py})}

      {:error, %Error{reason: :session_not_found}} ->
        {:ok, Map.merge(base, %{refs: 0, python: nil})}

      {:error, %Error{reason: :worker_exited}} ->
        {:ok, Map.merge(base, %{refs: 0, python: nil, lost: true})}

      error ->
        error
    end
  end

  ## Errors --------------------------------------------------------------------------------------

  @doc false
  # The error for an exit of a GenServer.call to the store. Only a store that is not running
  # (or stopped during the call) means "not started"; a timeout is a timeout.
  @spec exit_error(Instance.t(), term(), timeout()) :: Error.t()
  def exit_error(inst, {:timeout, _}, timeout) do
    Error.new(
      :timeout,
      "the session store (#{inspect(inst.server)}) did not answer within #{timeout} ms",
      %{timeout: timeout, server: inst.server}
    )
  end

  def exit_error(inst, {reason, _}, _) when reason in [:noproc, :normal, :shutdown],
    do: Instance.not_started(inst.name)

  def exit_error(inst, {{:shutdown, _}, _}, _), do: Instance.not_started(inst.name)
  def exit_error(inst, {{:nodedown, _}, _}, _), do: Instance.not_started(inst.name)

  def exit_error(inst, {reason, _}, _timeout) do
    Error.new(
      :session_store_exited,
      "the session store (#{inspect(inst.server)}) exited during the call " <>
        "(#{inspect(reason)}); Snakeport is restarting it",
      %{reason: reason}
    )
  end

  def exit_error(inst, reason, timeout), do: exit_error(inst, {reason, nil}, timeout)

  @doc false
  def lost_error(info) do
    next =
      if info.auto,
        do: "Its refs are gone; its process's other calls run in a new auto-session.",
        else: "Call Snakeport.release_session/2 to start it afresh."

    {worker, details} =
      case info do
        %{node: node} when node != node() ->
          {"worker (#{info.index} on node #{inspect(node)}) exited or that node went down " <>
             "or was disconnected", %{node: node}}

        _ ->
          {"worker (#{info.index}) exited", %{}}
      end

    Error.new(
      :session_lost,
      "session #{inspect(info.id)} was lost: its #{worker}, and its Python objects with " <>
        "it. " <> next,
      Map.merge(details, %{session: info.id, worker: info.index})
    )
  end
end
