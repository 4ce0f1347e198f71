defmodule Snakeport.Sessions do
  @moduledoc false
  # The caller side of an instance's session store (Snakeport.Sessions.Server is the store,
  # as Registry is to Registry.Partition): everything here runs in the calling process.
  #
  # A call finds its session with one ETS lookup and, when the process already owns it (the
  # usual case), sends nothing to the store: the process's last owned session is cached in
  # its dictionary, and the owners table is read only when the row is not that one. Only a
  # first use (adoption, creation) asks the store, bounded by the call's own timeout.
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
  #      a released one answers :ref_released instead of being re-created);
  #   4. else the process's auto-session of that instance; when that was lost (its worker
  #      died), a new one.
  #
  # `timeout` bounds the wait for the session store when the session has to be adopted (the
  # call's own timeout: the store's answer is part of the call).
  @spec checkout(Instance.t(), String.t() | SessionContext.t() | nil, String.t() | nil, timeout()) ::
          {:ok, info()} | {:error, Error.t()}
  def checkout(inst, explicit, ref_session, timeout) do
    cond do
      explicit != nil -> ensure(inst, explicit, true, timeout)
      ctx = SessionContext.current(inst.name) -> ensure(inst, ctx, true, timeout)
      ref_session != nil -> ensure(inst, ref_session, false, timeout)
      true -> auto(inst, timeout)
    end
  end

  # The process's auto-session. A lost one (its worker died and the store marked it lost)
  # is replaced by a new auto-session on a live worker; the lost row is kept for its refs.
  # (A worker that died before the store handled its :DOWN is found by the request itself,
  # which cannot be written: the caller then renews the session with renew_auto/3.)
  defp auto(inst, timeout) do
    id = auto_id(inst.name)

    case ensure(inst, id, :auto, timeout) do
      {:error, %Error{reason: :session_lost, details: %{session: ^id}}} ->
        renew_auto(inst, id, timeout)

      other ->
        other
    end
  end

  @doc false
  # Whether `id` is the calling process's auto-session of instance `name`.
  @spec own_auto?(atom(), String.t()) :: boolean()
  def own_auto?(name, id), do: match?(%{^name => ^id}, Process.get(@auto_key))

  @doc false
  # Replaces the process's auto-session `old_id` (lost with its worker) by a new one.
  @spec renew_auto(Instance.t(), String.t(), timeout()) :: {:ok, info()} | {:error, Error.t()}
  def renew_auto(inst, old_id, timeout) do
    name = inst.name

    case Process.get(@auto_key) do
      %{^name => ^old_id} = ids -> Process.put(@auto_key, Map.delete(ids, name))
      _ -> :ok
    end

    ensure(inst, auto_id(name), :auto, timeout)
  end

  @doc false
  # The process's auto-session id in instance `name` (created on first use).
  @spec auto_id(atom()) :: String.t()
  def auto_id(name) do
    case Process.get(@auto_key) do
      %{^name => id} ->
        id

      ids ->
        id = "auto-" <> Integer.to_string(System.unique_integer([:positive]))
        Process.put(@auto_key, Map.put(ids || %{}, name, id))
        id
    end
  end

  defp ensure(inst, %SessionContext{session_id: id, instance: name} = ctx, create, timeout)
       when name == inst.name do
    limits = %{
      max_refs: ctx.max_refs,
      ttl_seconds: ctx.ttl_seconds,
      tags: ctx.tags,
      overflow: ctx.overflow
    }

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

  defp fast(inst, id, limits, create, timeout) do
    case :ets.lookup(inst.sessions, id) do
      [{^id, info, last, lost, _ttl}] ->
        cond do
          not owner?(inst, id, info) -> adopt(inst, id, limits, create, timeout)
          lost -> {:error, lost_error(info)}
          limits != nil and conflict(info, limits) != :ok -> conflict(info, limits)
          true -> touch(inst, id, last) && {:ok, info}
        end

      [] ->
        adopt(inst, id, limits, create, timeout)
    end
  rescue
    ArgumentError -> {:error, Instance.not_started(inst.name)}
  end

  # Whether the caller owns the session of this row. The caller's last owned session is
  # cached in its process dictionary as {instance, id, gen} (`gen` is unique per created
  # session): owner rows are only added by the process's own adopt, and removed only when
  # the session is dropped (a new session with that id has a new gen) or the process dies,
  # so a row with the cached gen is still owned. Otherwise one lookup of the owners table.
  defp owner?(%{name: name} = inst, id, %{gen: gen}) do
    case Process.get(@owned_key) do
      {^name, ^id, ^gen} -> true
      _ -> :ets.member(inst.owners, {id, self()}) and remember_owned(name, id, gen)
    end
  end

  defp remember_owned(name, id, gen) do
    Process.put(@owned_key, {name, id, gen})
    true
  end

  defp touch(inst, id, last) do
    now = System.monotonic_time(:millisecond)
    if now - last >= @touch_granularity, do: :ets.update_element(inst.sessions, id, {3, now})
    true
  end

  defp adopt(inst, id, limits, create, timeout) do
    case Server.adopt(inst.server, id, self(), limits, create, timeout) do
      {:ok, info, lost} ->
        remember_owned(inst.name, id, info.gen)
        if lost, do: {:error, lost_error(info)}, else: {:ok, info}

      {:error, :not_found} ->
        {:error,
         Error.new(
           :ref_released,
           "the ref's session #{inspect(id)} was released (its owners died, it was released " <>
             "explicitly, or its TTL passed); its refs are gone",
           %{cause: :session_released, session: id}
         )}

      {:error, %Error{} = error} ->
        {:error, error}
    end
  catch
    :exit, reason -> {:error, exit_error(inst, reason, timeout)}
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
  def reopen(inst, info, timeout) do
    Server.reopen(inst.server, info.id, info.gen, timeout)
  catch
    :exit, _ -> :not_found
  end

  @doc false
  # Creates a store session (Snakeport.SessionStore): see Server.create/6.
  @spec create(Instance.t(), String.t(), pid() | nil, map(), :create | :get_or_create, timeout()) ::
          {:ok, info(), boolean()} | {:error, :already_exists | Error.t()}
  def create(inst, id, keeper, limits, mode, timeout) do
    Server.create(inst.server, id, keeper, limits, mode, timeout)
  catch
    :exit, reason -> {:error, exit_error(inst, reason, timeout)}
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

      :not_found ->
        inst.pool_table
        |> Pool.entries()
        |> Enum.map(&{&1, Worker.send_request(&1, Protocol.release_session(), session_id)})
        |> Enum.map(fn {entry, sent} -> released_in(entry, sent, timeout) end)
        |> Enum.reduce({:ok, 0}, fn
          {:ok, n}, {:ok, total} -> {:ok, total + n}
          _, acc -> acc
        end)
    end
  catch
    :exit, reason -> {:error, exit_error(inst, reason, timeout)}
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

      :not_found ->
        :ok

      {:error, _} = error ->
        error
    end
  end

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
        :ok

      {:error, _} = error ->
        error
    end
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

      :not_found ->
        {:error,
         Error.new(
           :session_not_found,
           "no session #{inspect(session_id)} (never created, or released)",
           %{session: session_id}
         )}
    end
  catch
    :exit, reason -> {:error, exit_error(inst, reason, @store_timeout)}
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

    Error.new(
      :session_lost,
      "session #{inspect(info.id)} was lost: its worker (#{info.index}) exited, and its " <>
        "Python objects with it. " <> next,
      %{session: info.id, worker: info.index}
    )
  end
end
