defmodule Snakeport.Sessions.Server do
  @moduledoc false
  # The session store of one instance (a GenServer; Snakeport.Sessions is its caller side).
  # The harness is the authority on which sessions exist.
  #
  # * A public ETS table `{session_id, info, last_access, lost?, ttl_ms}` that callers read
  #   on every call (and whose `last_access` they refresh themselves); every other write goes
  #   through this process. A second public table holds one `{{session_id, pid}}` row per
  #   owner, so that a caller can check "I already own this session" with one lookup:
  #   steady-state calls never message this process.
  # * Owners: every process that adopts a session (uses it in a call, or in
  #   `SessionContext.with_session/2`) is monitored. Monitors are kept both ways:
  #   `monitors` maps a monitor ref to `{:owner, session_id, pid}`, `owners` maps a session
  #   to `%{pid => monitor_ref}`. When the last owner dies the session is released in
  #   Python (a `release_session` request to its worker), not just forgotten.
  # * This process never writes to a port (one busy port would stall every session of the
  #   instance): it sends its requests to the worker's Snakeport.Courier, which writes them
  #   in the order this process sent them and sends the decoded replies back here
  #   (`courier` maps each request's tag to what it was for). Nothing here ever waits for a
  #   worker: callers waiting for an answer that depends on a reply get it (GenServer.reply)
  #   when the reply arrives.
  # * Opening is acknowledged. A new session is first `opening` (not in the table): the
  #   worker is asked to open it with the limits its creator chose (the worker's defaults,
  #   which the harness passes to it, fill in the rest), and every process that adopts the
  #   id meanwhile waits. When the worker's session info comes back, the row (with the
  #   limits the worker reports) becomes visible and the waiters become owners; when the
  #   worker refuses (e.g. tags it cannot decode) or dies, the waiters get the error and
  #   nothing remains. So a row exists only for a session its worker has opened, and every
  #   request that finds the row reaches the worker after the open_session.
  # * A session is released in the worker after its row is removed, so every request that
  #   found the row was written to the port before the release (a request that lost the
  #   race with the removal fails with session_not_found and creates nothing). The count
  #   the worker answers becomes a [:snakeport, :session, :closed] event (and the answer of
  #   Snakeport.release_session/2); an error becomes [:snakeport, :session, :close_failed].
  # * A request answered `session_not_found` while the row exists gets the session opened
  #   again (reopen, with the limits recorded for it).
  # * Kinds of sessions (`info.kind`): `:auto` (a process's auto-session) and `:owned` (a
  #   session context, a shared id) are released when their last owner dies; `:store`
  #   sessions (Snakeport.SessionStore) have no owners in that sense: the processes that use
  #   them are monitored (so that their calls stay message-free) but their deaths release
  #   nothing, unless they were made *keepers* (`create_session(id, owner: pid)`): a store
  #   session with keepers is released when its last keeper dies.
  # * A later opener's limits (a context's `:max_refs`, ... ; a get-or-create's) must match
  #   the session's: a difference is the caller's `:session_options_conflict` error
  #   (Snakeport.Sessions.conflict/3), never silently ignored.
  # * The TTL sweep (every `cleanup_interval`) never releases a session under a running
  #   call. A row whose `last_access` (refreshed by callers as they check out) is older than
  #   its TTL is not dropped here: the session's worker is asked, through its courier, to
  #   `expire_session` it, which it does only when no call of the session is in flight and
  #   none started or ended within the TTL (one step in the worker, so no call can start in
  #   between); else it answers the session's idle time, and the row's `last_access` is set
  #   back to match (the TTL clock restarts when a call ends, without any write on the call
  #   path). While the question is out (`expiring`), a reopen of the session waits for the
  #   answer. A lost row is dropped at once.
  # * Session state (the `get_session_state`/`set_session_state` tools,
  #   Snakeport.SessionStore.put_state/4) lives in a public ordered_set
  #   `{{session_id, key}, gen, value}`, written by callers, dropped here with the session.
  # * The instance's epoch (an :atomics counter in Snakeport.Instance) is bumped after every
  #   row this process adds, removes or marks lost, and when its tables are new or go:
  #   callers keep their last session's row while it has not moved (Snakeport.Sessions).
  # * Each session is pinned to one worker, the least loaded at creation among those not
  #   marked stuck (Snakeport.Pool.available/1). This process
  #   monitors the workers it pinned sessions to; when one dies its sessions are marked
  #   lost (their refs died with the Python process). A lost row stays (until its owners
  #   die, its TTL passes or it is released) so that its refs answer :session_lost rather
  #   than :ref_released; lost rows do not count against `max_sessions`. An explicit lost
  #   session keeps answering :session_lost until Snakeport.release_session/2 (its owners
  #   must learn that its objects are gone). A lost AUTO-session does not block its
  #   process: the process's next call that does not use its refs gets a new auto-session
  #   (Snakeport.Sessions.renew_auto/3), and only the old refs answer :session_lost.
  #
  # Cluster (Snakeport.Cluster): a session lives in the store of the node whose worker
  # holds it, its *home*, which is its authority as above: it monitors every owner, those
  # of other nodes too (a remote monitor; a node that goes down or disconnects gives
  # `:noconnection`, which counts as the owner's death), and releases the session in
  # Python. When it drops a session that has owners on other nodes, it tells their stores
  # (`{:remote_dropped, id, gen}`). The store of a node whose processes use a session of
  # another node keeps a *route*: a row like any other whose `info.node` is the home node
  # and whose `info.worker` is a remote entry (Cluster.remote_entry/2: the worker's pid and
  # courier), written by route/5 once the home store accepted the process as an owner; so
  # that a call finds its session with the same one lookup. A route is never expired or
  # released here: it goes when the last local owner dies, when the home store says the
  # session is gone, or with forget_route/4; it is marked lost when its worker dies or its
  # node goes down or disconnects (this store monitors the remote worker, as it monitors
  # its own). Routes do not count against `max_sessions` nor in counts/2.

  use GenServer
  require Logger

  alias Snakeport.{Client, Courier, Defaults, Error, Pool, Protocol, Sessions, Telemetry}

  @threshold Defaults.accumulation_threshold()

  @type info :: %{
          id: String.t(),
          worker: Snakeport.Worker.entry(),
          index: non_neg_integer(),
          pid: pid(),
          max_refs: pos_integer(),
          ttl_seconds: number(),
          tags: term(),
          created_at: integer(),
          auto: boolean(),
          kind: :auto | :owned | :store,
          overflow: :error | :evict_lru,
          gen: pos_integer(),
          node: node(),
          ref_worker: non_neg_integer() | {non_neg_integer(), node()}
        }

  ## Requests (the messages of this process stay in this module) ------------------------------

  @doc false
  def start_link(%{names: names} = arg),
    do: GenServer.start_link(__MODULE__, arg, name: names.server)

  @doc false
  # Makes `pid` an owner of session `id`, creating the session when `create` allows it
  # (true, or :auto for an auto-session). `limits` (nil for none) are the creator's.
  # Replies {:ok, info, lost?} or {:error, :not_found | %Error{}}.
  def adopt(server, id, pid, limits, create, timeout),
    do: GenServer.call(server, {:adopt, id, pid, limits, create}, timeout)

  @doc false
  # Creates the store session `id` (Snakeport.SessionStore): `mode` is `:create` (an
  # existing id is {:error, :already_exists}) or `:get_or_create`; `keeper` (a pid or nil)
  # becomes a keeper. Replies {:ok, info, lost?} or {:error, :already_exists | %Error{}}.
  def create(server, id, keeper, limits, mode, timeout),
    do: GenServer.call(server, {:create, id, keeper, limits, mode}, timeout)

  @doc false
  # Opens session `id` (of generation `gen`) again in its worker; replies once the worker
  # answered: :ok, {:error, %Error{}}, or :not_found (no such row any more).
  def reopen(server, id, gen, timeout), do: GenServer.call(server, {:reopen, id, gen}, timeout)

  @doc false
  # Forgets session `id` now and releases it in Python. Replies {:ok, refs_released},
  # {:error, %Error{}} or :not_found.
  def release(server, id, timeout), do: GenServer.call(server, {:release, id}, timeout)

  @doc false
  # {:ok, info, owners, last_access_system_ms, lost?} or :not_found.
  def describe(server, id, timeout), do: GenServer.call(server, {:describe, id}, timeout)

  @doc false
  # {:ok, sessions, %{worker_pid => sessions}}: sessions homed here.
  def counts(server, timeout), do: GenServer.call(server, :counts, timeout)

  @doc false
  # Adds the route of a session homed on another node (`info`, as its home store answered
  # it, with a remote entry), `pid` one of its owners here. Replies :ok, or an error when a
  # session of this node has that id.
  def route(server, info, pid, lost, timeout),
    do: GenServer.call(server, {:route, info, pid, lost}, timeout)

  @doc false
  # Drops the route of session `id` (of generation `gen`): its home released it.
  def forget_route(server, id, gen), do: GenServer.cast(server, {:remote_dropped, id, gen})

  ## Server ----------------------------------------------------------------------------------

  @impl true
  def init(%{names: names, config: config}) do
    for table <- [names.sessions, names.owners] do
      :ets.new(table, [
        :named_table,
        :public,
        :set,
        read_concurrency: true,
        write_concurrency: true
      ])
    end

    # ordered_set: a session's keys are one range, dropped with one select_delete.
    :ets.new(names.state, [:named_table, :public, :ordered_set, read_concurrency: true])

    # New tables: no session a caller cached (Snakeport.Sessions) is valid any more.
    {:ok, %{epoch: epoch}} = Snakeport.Instance.fetch(names.name)
    changed(epoch)

    store = config.session_store
    schedule_sweep(store.cleanup_interval)

    {:ok,
     %{
       instance: names.name,
       server: names.server,
       table: names.sessions,
       epoch: epoch,
       owners_table: names.owners,
       state_table: names.state,
       pool_table: names.pool_table,
       store: store,
       # session id => %{pid => monitor ref}
       owners: %{},
       # store session id => MapSet of keeper pids (also in owners)
       keepers: %{},
       # session id => %{gen: gen, reopens: [from]}: expire_session asked, not answered
       expiring: %{},
       # monitor ref => {:owner, session id, pid} | {:worker, worker pid, index}
       monitors: %{},
       # worker pid => {monitor ref, sessions pinned to it}
       workers: %{},
       # session id => the session being opened (see open/6)
       opening: %{},
       # courier tag => {:open, id} | {:reopen, id, index, from}
       #   | {:release, id, index, reason, froms} | {:expire, id, gen, index}
       courier: %{},
       # how many rows are lost (they do not count against max_sessions)
       lost: 0,
       # how many rows are routes to sessions of other nodes, not lost (nor do they)
       routes: 0
     }}
  end

  @impl true
  def handle_call({:adopt, id, pid, limits, create}, from, state) do
    waiter = %{from: from, pid: pid, limits: limits, keeper: false}

    case :ets.lookup(state.table, id) do
      [{^id, info, _last, _lost, _ttl}] when info.node != node() ->
        # A route: the caller adopts the session at its home.
        {:reply, {:remote, info}, state}

      [{^id, info, _last, lost, _ttl}] ->
        existing(state, id, info, lost, waiter)

      [] ->
        case state.opening do
          %{^id => _} ->
            # Being opened: wait with its creator (its limits stand).
            {:noreply, wait_opening(state, id, waiter)}

          %{} when create == false ->
            {:reply, {:error, :not_found}, state}

          %{} ->
            open(state, id, waiter, if(create == :auto, do: :auto, else: :owned))
        end
    end
  end

  def handle_call({:create, id, keeper, limits, mode}, from, state) do
    waiter = %{from: from, pid: keeper, limits: limits, keeper: keeper != nil}

    case :ets.lookup(state.table, id) do
      [{^id, info, _last, _lost, _ttl}] when info.node != node() ->
        {:reply, {:remote, info}, state}

      [{^id, _info, _last, _lost, _ttl}] when mode == :create ->
        {:reply, {:error, :already_exists}, state}

      [{^id, info, _last, lost, _ttl}] ->
        existing(state, id, info, lost, waiter)

      [] ->
        case state.opening do
          %{^id => _} when mode == :create -> {:reply, {:error, :already_exists}, state}
          %{^id => _} -> {:noreply, wait_opening(state, id, waiter)}
          %{} -> open(state, id, waiter, :store)
        end
    end
  end

  def handle_call({:reopen, id, gen}, from, state) do
    case state.expiring do
      # The worker is asked whether the session expired: reopen only if it did not.
      %{^id => %{gen: ^gen} = expiring} ->
        expiring = %{expiring | reopens: [from | expiring.reopens]}
        {:noreply, %{state | expiring: Map.put(state.expiring, id, expiring)}}

      %{} ->
        {:noreply, do_reopen(state, id, gen, from)}
    end
  end

  def handle_call({:release, id}, from, state) do
    case :ets.lookup(state.table, id) do
      [{^id, %{node: node} = info, _, _, _}] when node != node() ->
        # A route: its home releases it (Snakeport.Sessions.release_session/3).
        {:reply, {:remote, info}, state}

      _ ->
        release_here(state, id, from)
    end
  end

  def handle_call({:describe, id}, _from, state) do
    case :ets.lookup(state.table, id) do
      [{^id, %{node: node} = info, _, _, _}] when node != node() ->
        {:reply, {:remote, info}, state}

      [{^id, info, last, lost, _}] ->
        owners = state.owners |> Map.get(id, %{}) |> Map.keys()

        last_system =
          System.system_time(:millisecond) - (System.monotonic_time(:millisecond) - last)

        {:reply, {:ok, info, owners, last_system, lost}, state}

      [] ->
        {:reply, :not_found, state}
    end
  end

  def handle_call(:counts, _from, state) do
    per_worker = Map.new(state.workers, fn {pid, {_mref, count}} -> {pid, count} end)

    routes =
      :ets.select_count(state.table, [
        {{:_, %{node: :"$1"}, :_, :_, :_}, [{:"=/=", :"$1", {:const, node()}}], [true]}
      ])

    {:reply, {:ok, :ets.info(state.table, :size) - routes, per_worker}, state}
  end

  def handle_call({:route, %{id: id, gen: gen} = info, pid, lost}, _from, state) do
    case :ets.lookup(state.table, id) do
      [{^id, %{gen: ^gen, node: node}, _, _, _}] when node != node() ->
        {:reply, :ok, add_owner(state, id, pid)}

      [{^id, %{node: node}, _, _, _}] when node == node() ->
        error =
          Error.new(
            :session_options_conflict,
            "session #{inspect(id)} exists on this node (#{inspect(node)}) and on " <>
              "#{inspect(info.node)}: session ids must be unique in the cluster",
            %{session: id, nodes: [node, info.node]}
          )

        {:reply, {:error, error}, state}

      found ->
        # A route to an older session with that id goes first.
        state =
          case found do
            [_] -> state |> drop(id, :remote) |> elem(1)
            [] -> state
          end

        ttl_ms = round(info.ttl_seconds * 1000)
        :ets.insert(state.table, {id, info, System.monotonic_time(:millisecond), lost, ttl_ms})
        changed(state.epoch)

        state =
          if lost,
            do: %{state | lost: state.lost + 1},
            else: %{add_load(state, info.worker) | routes: state.routes + 1}

        {:reply, :ok, add_owner(state, id, pid)}
    end
  end

  @impl true
  # The home of a session we route to released it (or a caller learnt that it is gone).
  def handle_cast({:remote_dropped, id, gen}, state) do
    case :ets.lookup(state.table, id) do
      [{^id, %{gen: ^gen, node: node}, _, _, _}] when node != node() ->
        {:noreply, state |> drop(id, :remote) |> elem(1)}

      _ ->
        {:noreply, state}
    end
  end

  @impl true
  # A courier's answer to one of our requests (see Snakeport.Courier).
  def handle_info({tag, result}, %{courier: courier} = state) when is_map_key(courier, tag) do
    Process.demonitor(tag, [:flush])
    {what, courier} = Map.pop(courier, tag)
    {:noreply, answered(%{state | courier: courier}, what, result)}
  end

  # A courier died (with its worker) before it answered.
  def handle_info({:DOWN, tag, :process, _pid, reason}, %{courier: courier} = state)
      when is_map_key(courier, tag) do
    {what, courier} = Map.pop(courier, tag)
    error = Client.transport_error({:down, reason}, nil, nil)
    {:noreply, answered(%{state | courier: courier}, what, {:error, error})}
  end

  # An owner or a worker died.
  def handle_info({:DOWN, mref, :process, _pid, _reason}, state) do
    case Map.pop(state.monitors, mref) do
      {{:owner, id, pid}, monitors} ->
        state = %{state | monitors: monitors}
        :ets.delete(state.owners_table, {id, pid})
        owners = state.owners |> Map.get(id, %{}) |> Map.delete(pid)
        state = %{state | owners: Map.put(state.owners, id, owners)}

        if route?(state, id) do
          # Its home monitors the owner too, and releases the session if it must.
          if map_size(owners) == 0,
            do: {:noreply, state |> drop(id, :owner_down) |> elem(1)},
            else: {:noreply, state}
        else
          owner_down(state, id, pid, owners)
        end

      {{:worker, wpid, index}, monitors} ->
        {:noreply, worker_down(%{state | monitors: monitors}, wpid, index)}

      {nil, _} ->
        {:noreply, state}
    end
  end

  # Remote rows, sent by the home of a session (drop/3 there): gone.
  def handle_info({:remote_dropped, id, gen}, state),
    do: handle_cast({:remote_dropped, id, gen}, state)

  def handle_info(:sweep, state) do
    now = System.monotonic_time(:millisecond)

    expired =
      :ets.select(state.table, [
        {{:"$1", :"$2", :"$3", :"$4", :"$5"}, [{:<, {:+, :"$3", :"$5"}, now}],
         [{{:"$1", :"$2", :"$4"}}]}
      ])

    {dropped, state} =
      Enum.reduce(expired, {[], state}, fn
        # Lost: its objects died with its worker; nothing to ask.
        {id, _info, true}, {acc, state} ->
          {_, state} = drop(state, id, :ttl)
          {[id | acc], state}

        # A route: its home decides (its worker answers expire_session there).
        {id, %{node: node}, false}, {acc, state} when node != node() ->
          :ets.update_element(state.table, id, {3, now})
          {acc, state}

        {id, info, false}, {acc, state} ->
          {acc, ask_expire(state, id, info)}
      end)

    if dropped != [], do: pruned(state, :ttl, Enum.reverse(dropped))
    schedule_sweep(state.store.cleanup_interval)
    {:noreply, state}
  end

  def handle_info(_msg, state), do: {:noreply, state}

  @impl true
  # The tables go with this process: no caller goes on with a session it cached (a process
  # killed does not get here; its successor's init bumps the epoch too).
  def terminate(_reason, state) do
    changed(state.epoch)
    :ok
  end

  defp route?(state, id) do
    match?([{^id, %{node: node}, _, _, _}] when node != node(), :ets.lookup(state.table, id))
  end

  defp owner_down(state, id, pid, owners) do
    if last_owner_gone?(state, id, pid, owners) do
      state =
        case drop(state, id, :owner_down) do
          {{info, false}, state} -> release(state, info, :owner_down, [])
          {_, state} -> state
        end

      pruned(state, :owner_down, [id])
      {:noreply, state}
    else
      {:noreply, forget_keeper(state, id, pid)}
    end
  end

  defp schedule_sweep(interval), do: Process.send_after(self(), :sweep, interval)

  defp release_here(state, id, from) do
    case drop(state, id, :explicit) do
      {{info, false}, state} ->
        pruned(state, :explicit, [id])
        {:noreply, release(state, info, :explicit, [from])}

      {{_info, true}, state} ->
        pruned(state, :explicit, [id])
        {:reply, {:ok, 0}, state}

      {nil, %{opening: %{^id => opening}} = state} ->
        # Released while being opened: released as soon as it is open.
        opening = %{opening | releasers: [from | opening.releasers]}
        {:noreply, %{state | opening: Map.put(state.opening, id, opening)}}

      {nil, state} ->
        {:reply, :not_found, state}
    end
  end

  ## Opening -----------------------------------------------------------------------------------

  defp open(state, id, waiter, kind) do
    %{max_sessions: max, strict_mode: strict} = state.store
    # Live sessions, those being opened included: lost rows hold no Python objects and must
    # not keep new ones out.
    count = live_count(state)

    cond do
      count >= max ->
        accumulation(state, count, :quota_exceeded)

        error =
          Error.new(
            :session_quota_exceeded,
            "cannot create session #{inspect(id)}: the session store holds #{count} live sessions, " <>
              "its limit (session_store: [max_sessions: #{max}]). Release sessions you no " <>
              "longer need, or raise the limit.",
            %{max_sessions: max, current_sessions: count}
          )

        if strict, do: Logger.warning("[Snakeport] " <> error.message)
        {:reply, {:error, error}, state}

      entry = pick_worker(state) ->
        request = Protocol.open_session(session_opts(waiter.limits))
        tag = Courier.request(entry.courier, request, id)

        opening = %{
          entry: entry,
          kind: kind,
          gen: System.unique_integer([:positive, :monotonic]),
          waiters: [waiter],
          releasers: []
        }

        state = %{state | opening: Map.put(state.opening, id, opening)}
        {:noreply, state |> put_courier(tag, {:open, id}) |> add_load(entry)}

      true ->
        error =
          Error.new(:no_workers, "no Python worker is running (they are starting or restarting)")

        {:reply, {:error, error}, state}
    end
  end

  # Only the limits a caller chose: the worker's defaults (from the instance's config) fill
  # in the others, and its answer says which apply.
  defp session_opts(nil), do: %{}

  defp session_opts(limits) do
    for {key, value} <- limits, value != nil, into: %{}, do: {key, value}
  end

  defp opened(state, id, py) do
    {opening, state} = pop_opening(state, id)
    %{entry: entry, kind: kind} = opening

    info = %{
      id: id,
      worker: entry,
      index: entry.index,
      pid: entry.pid,
      max_refs: py.max_refs,
      ttl_seconds: py.ttl_seconds,
      tags: Map.get(py, :tags),
      overflow: overflow(Map.get(py, :overflow)),
      created_at: System.system_time(:millisecond),
      auto: kind == :auto,
      kind: kind,
      gen: opening.gen,
      # The session's home (a route's info names another node, see the module comment),
      # and what the refs of its replies carry as their worker (Snakeport.Values).
      node: node(),
      ref_worker: entry.index
    }

    ttl_ms = round(info.ttl_seconds * 1000)
    :ets.insert(state.table, {id, info, System.monotonic_time(:millisecond), false, ttl_ms})
    changed(state.epoch)
    waiters = Enum.reverse(opening.waiters)

    {state, replies} =
      Enum.reduce(waiters, {state, []}, fn waiter, {state, replies} ->
        case Sessions.conflict(info, waiter.limits) do
          :ok -> {join(state, id, waiter), [{waiter.from, {:ok, info, false}} | replies]}
          {:error, error} -> {state, [{waiter.from, {:error, error}} | replies]}
        end
      end)

    current = live_count(state)

    Telemetry.execute([:snakeport, :session, :created], %{current_sessions: current}, %{
      instance: state.instance,
      session_id: id,
      worker: entry.index,
      tags: info.tags,
      auto: kind == :auto,
      kind: kind
    })

    if current * 100 > state.store.max_sessions * @threshold,
      do: accumulation(state, current, :threshold_warning)

    replies |> Enum.reverse() |> Enum.each(fn {from, reply} -> GenServer.reply(from, reply) end)

    # Snakeport.release_session/2 was called meanwhile: release it now.
    case opening.releasers do
      [] ->
        state

      froms ->
        {{info, false}, state} = drop(state, id, :explicit)
        pruned(state, :explicit, [id])
        release(state, info, :explicit, froms)
    end
  end

  defp open_failed(state, id, %Error{} = error) do
    {opening, state} = pop_opening(state, id)
    state = sub_load(state, opening.entry.pid)

    error = %{
      error
      | message:
          "the worker (#{opening.entry.index}) did not open session #{inspect(id)}: " <>
            error.message
    }

    open_failed_event(state, id, opening.entry.index, error, false)
    Enum.each(opening.waiters, fn waiter -> GenServer.reply(waiter.from, {:error, error}) end)
    Enum.each(opening.releasers, &GenServer.reply(&1, {:ok, 0}))
    state
  end

  defp open_failed_event(state, id, index, error, reopen) do
    Logger.warning("[Snakeport] " <> error.message)

    Telemetry.execute([:snakeport, :session, :open_failed], %{}, %{
      instance: state.instance,
      session_id: id,
      worker: index,
      reopen: reopen,
      error: error
    })
  end

  defp wait_opening(state, id, waiter) do
    opening = Map.fetch!(state.opening, id)
    opening = %{opening | waiters: [waiter | opening.waiters]}
    %{state | opening: Map.put(state.opening, id, opening)}
  end

  # A caller found the session's row: it joins (its limits must match).
  defp existing(state, id, info, lost, waiter) do
    case Sessions.conflict(info, waiter.limits) do
      :ok ->
        :ets.update_element(state.table, id, {3, System.monotonic_time(:millisecond)})
        {:reply, {:ok, info, lost}, join(state, id, waiter)}

      {:error, _} = error ->
        {:reply, error, state}
    end
  end

  # The waiter's process becomes an owner (monitored), and a keeper when asked.
  defp join(state, _id, %{pid: nil}), do: state

  defp join(state, id, %{pid: pid, keeper: keeper}) do
    state = add_owner(state, id, pid)

    if keeper do
      keepers = state.keepers |> Map.get(id, MapSet.new()) |> MapSet.put(pid)
      %{state | keepers: Map.put(state.keepers, id, keepers)}
    else
      state
    end
  end

  defp overflow(policy) when policy in [:error, :evict_lru], do: policy
  defp overflow(_), do: :error

  defp do_reopen(state, id, gen, from) do
    case :ets.lookup(state.table, id) do
      # (Not a route: the session's home reopens it, Snakeport.Sessions.reopen/3.)
      [{^id, %{gen: ^gen} = info, _last, false, _ttl}] when info.node == node() ->
        limits = %{
          max_refs: info.max_refs,
          ttl_seconds: info.ttl_seconds,
          tags: info.tags,
          overflow: info.overflow
        }

        tag =
          Courier.request(info.worker.courier, Protocol.open_session(session_opts(limits)), id)

        put_courier(state, tag, {:reopen, id, info.index, from})

      _ ->
        GenServer.reply(from, :not_found)
        state
    end
  end

  ## Expiry ---------------------------------------------------------------------------------------

  # The row's TTL passed: ask its worker to release the session if it is idle there too.
  defp ask_expire(state, id, info) do
    if Map.has_key?(state.expiring, id) do
      state
    else
      ttl_ms = round(info.ttl_seconds * 1000)
      tag = Courier.request(info.worker.courier, Protocol.expire_session(ttl_ms), id)
      state = put_courier(state, tag, {:expire, id, info.gen, info.index})
      %{state | expiring: Map.put(state.expiring, id, %{gen: info.gen, reopens: []})}
    end
  end

  defp expire_answered(state, id, gen, index, result) do
    {expiring, all} = Map.pop(state.expiring, id, %{gen: gen, reopens: []})
    state = %{state | expiring: all}
    current = match?([{^id, %{gen: ^gen}, _, false, _}], :ets.lookup(state.table, id))

    case Protocol.expired(result) do
      {:ok, {:expired, n}} ->
        state =
          if current do
            {_, state} = drop(state, id, :ttl)
            pruned(state, :ttl, [id])
            meta = %{instance: state.instance, session_id: id, worker: index, reason: :ttl}
            Telemetry.execute([:snakeport, :session, :closed], %{refs: n}, meta)
            state
          else
            state
          end

        Enum.each(expiring.reopens, &GenServer.reply(&1, :not_found))
        state

      {:ok, {:idle, idle_ms}} ->
        # In use, or used within its TTL: its TTL clock restarts from its last activity.
        if current do
          last = System.monotonic_time(:millisecond) - idle_ms
          :ets.update_element(state.table, id, {3, last})
        end

        Enum.reduce(Enum.reverse(expiring.reopens), state, &do_reopen(&2, id, gen, &1))

      {:error, error} ->
        # The worker died (its sessions are marked lost) or refused: the next sweep sees.
        Enum.each(expiring.reopens, &GenServer.reply(&1, {:error, error}))
        state
    end
  end

  defp pop_opening(state, id) do
    {opening, all} = Map.pop!(state.opening, id)
    {opening, %{state | opening: all}}
  end

  defp live_count(state),
    do: :ets.info(state.table, :size) - state.lost - state.routes + map_size(state.opening)

  ## Answers of the couriers --------------------------------------------------------------------

  defp answered(state, {:open, id}, result) do
    case Protocol.session_info_map(:open_session, result) do
      {:ok, py} -> opened(state, id, py)
      {:error, error} -> open_failed(state, id, error)
    end
  end

  defp answered(state, {:reopen, id, index, from}, result) do
    case Protocol.session_info_map(:open_session, result) do
      {:ok, _py} ->
        GenServer.reply(from, :ok)

      {:error, error} ->
        message = "the worker (#{index}) did not open session #{inspect(id)} again: "
        error = %{error | message: message <> error.message}
        open_failed_event(state, id, index, error, true)
        GenServer.reply(from, {:error, error})
    end

    state
  end

  defp answered(state, {:expire, id, gen, index}, result),
    do: expire_answered(state, id, gen, index, result)

  defp answered(state, {:release, id, index, reason, froms}, result) do
    meta = %{instance: state.instance, session_id: id, worker: index, reason: reason}

    case Protocol.released_count(result) do
      {:ok, n} ->
        Telemetry.execute([:snakeport, :session, :closed], %{refs: n}, meta)
        Enum.each(froms, &GenServer.reply(&1, {:ok, n}))

      {:error, error} ->
        Telemetry.execute(
          [:snakeport, :session, :close_failed],
          %{},
          Map.put(meta, :error, error)
        )

        # A worker that died took the session's objects with it: nothing is left to release.
        reply = if error.reason == :worker_exited, do: {:ok, 0}, else: {:error, error}
        Enum.each(froms, &GenServer.reply(&1, reply))
    end

    state
  end

  defp put_courier(state, tag, what), do: %{state | courier: Map.put(state.courier, tag, what)}

  # Releases a dropped session in its worker, through its courier; `froms` get the count.
  defp release(state, info, reason, froms) do
    tag = Courier.request(info.worker.courier, Protocol.release_session(), info.id)
    put_courier(state, tag, {:release, info.id, info.index, reason, froms})
  end

  ## Sessions, owners, workers ----------------------------------------------------------------

  defp accumulation(state, current, reason) do
    %{max_sessions: max, strict_mode: strict} = state.store
    utilization = Float.round(current * 100 / max, 2)

    Telemetry.execute(
      [:snakeport, :session, :accumulation_warning],
      %{current_sessions: current, max_sessions: max, utilization: utilization},
      %{instance: state.instance, reason: reason, strict_mode: strict}
    )

    if strict and reason == :threshold_warning do
      Logger.warning(
        "[Snakeport] session accumulation: #{current} of #{max} sessions in use " <>
          "(#{utilization}%, above #{@threshold}%). Sessions are released when their last " <>
          "owner process dies, on Snakeport.release_session/2, or after their TTL; check " <>
          "for long-lived processes that keep adopting new sessions."
      )
    end
  end

  # The least-loaded live worker that is not stuck: fewest sessions, then fewest requests
  # in flight (a restarted worker, with none, is picked first).
  defp pick_worker(state) do
    state.pool_table
    |> Pool.available()
    |> Enum.filter(&Process.alive?(&1.pid))
    |> Enum.min_by(
      fn entry ->
        load = state.workers |> Map.get(entry.pid, {nil, 0}) |> elem(1)
        {load, pending_size(entry), entry.index}
      end,
      fn -> nil end
    )
  end

  defp pending_size(entry) do
    :ets.info(entry.pending, :size) || 0
  end

  # Whether the death of `pid` releases session `id`: its last owner died (auto and owned
  # sessions), or its last keeper (store sessions: other users' deaths release nothing).
  defp last_owner_gone?(state, id, pid, owners) do
    case :ets.lookup(state.table, id) do
      [{^id, %{kind: :store}, _, _, _}] ->
        case state.keepers do
          %{^id => keepers} -> MapSet.member?(keepers, pid) and MapSet.size(keepers) == 1
          %{} -> false
        end

      _ ->
        map_size(owners) == 0
    end
  end

  defp forget_keeper(state, id, pid) do
    case state.keepers do
      %{^id => keepers} ->
        keepers = MapSet.delete(keepers, pid)
        %{state | keepers: Map.put(state.keepers, id, keepers)}

      %{} ->
        state
    end
  end

  defp add_owner(state, id, pid) do
    owners = Map.get(state.owners, id, %{})

    if Map.has_key?(owners, pid) do
      state
    else
      mref = Process.monitor(pid)
      :ets.insert(state.owners_table, {{id, pid}})

      %{
        state
        | owners: Map.put(state.owners, id, Map.put(owners, pid, mref)),
          monitors: Map.put(state.monitors, mref, {:owner, id, pid})
      }
    end
  end

  defp add_load(state, %{pid: wpid, index: index}) do
    case state.workers do
      %{^wpid => {mref, n}} ->
        %{state | workers: Map.put(state.workers, wpid, {mref, n + 1})}

      %{} ->
        mref = Process.monitor(wpid)

        %{
          state
          | workers: Map.put(state.workers, wpid, {mref, 1}),
            monitors: Map.put(state.monitors, mref, {:worker, wpid, index})
        }
    end
  end

  defp sub_load(state, wpid) do
    case state.workers do
      %{^wpid => {mref, n}} ->
        %{state | workers: Map.put(state.workers, wpid, {mref, max(n - 1, 0)})}

      %{} ->
        state
    end
  end

  # A row was added, removed or marked lost: callers re-read the rows of the sessions they
  # cached (Snakeport.Sessions). After the table write, so that a caller that sees the new
  # epoch finds the new row.
  defp changed(epoch), do: :atomics.add(epoch, 1, 1)

  # Removes a session: its row, its owners' monitors, its worker load. The caller releases
  # it in its worker (release/4) unless it was lost. Returns {{info, lost?} | nil, state}.
  defp drop(state, id, reason) do
    case :ets.take(state.table, id) do
      [{^id, info, _last, lost, _ttl}] ->
        changed(state.epoch)
        {owners, all_owners} = Map.pop(state.owners, id, %{})

        # Demonitor with :flush: a :DOWN already queued for these owners is discarded, so it
        # cannot later be taken for an owner of a new session with the same id.
        monitors =
          Enum.reduce(owners, state.monitors, fn {pid, mref}, acc ->
            Process.demonitor(mref, [:flush])
            :ets.delete(state.owners_table, {id, pid})
            Map.delete(acc, mref)
          end)

        state = %{
          state
          | owners: all_owners,
            monitors: monitors,
            keepers: Map.delete(state.keepers, id)
        }

        # The session's state goes with it (callers re-check the row after they write).
        :ets.select_delete(state.state_table, [{{{id, :_}, :_, :_}, [], [true]}])

        home = info.node == node()

        state =
          cond do
            lost -> %{state | lost: max(state.lost - 1, 0)}
            home -> sub_load(state, info.pid)
            true -> %{sub_load(state, info.pid) | routes: max(state.routes - 1, 0)}
          end

        # A route is only this node's way to the session: nothing was released.
        if home do
          tell_routes(state, id, info.gen, owners)

          Telemetry.execute(
            [:snakeport, :session, :released],
            %{remaining_sessions: :ets.info(state.table, :size)},
            %{
              instance: state.instance,
              session_id: id,
              worker: info.index,
              reason: reason,
              lost: lost
            }
          )
        end

        {{info, lost}, state}

      [] ->
        {nil, state}
    end
  end

  # The stores of the other nodes whose processes owned the dropped session forget their
  # routes to it (never blocking on a connection: a node that is gone has none left).
  defp tell_routes(state, id, gen, owners) do
    here = node()

    owners
    |> Enum.map(fn {pid, _mref} -> node(pid) end)
    |> Enum.uniq()
    |> Enum.reject(&(&1 == here))
    |> Enum.each(fn node ->
      :erlang.send({state.server, node}, {:remote_dropped, id, gen}, [:noconnect, :nosuspend])
    end)

    :ok
  end

  defp pruned(state, reason, ids) do
    Telemetry.execute(
      [:snakeport, :session, :pruned],
      %{count: length(ids), remaining_sessions: :ets.info(state.table, :size)},
      %{instance: state.instance, reason: reason, session_ids: ids, table_name: state.table}
    )
  end

  defp worker_down(state, wpid, index) do
    {_, workers} = Map.pop(state.workers, wpid)
    ids = :ets.select(state.table, [{{:"$1", %{pid: wpid}, :_, false, :_}, [], [:"$1"]}])
    Enum.each(ids, &:ets.update_element(state.table, &1, {4, true}))

    if ids != [] do
      changed(state.epoch)

      Telemetry.execute([:snakeport, :session, :lost], %{count: length(ids)}, %{
        instance: state.instance,
        worker: index,
        node: node(wpid),
        session_ids: ids
      })
    end

    # Routes to the sessions of a worker of another node (it died, or its node is gone).
    routes = if node(wpid) == node(), do: state.routes, else: state.routes - length(ids)
    %{state | workers: workers, lost: state.lost + length(ids), routes: max(routes, 0)}
  end
end
