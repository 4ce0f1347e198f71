defmodule Snakeport.Sessions do
  @moduledoc false
  # The session store: the harness is the authority on which sessions exist.
  #
  # * A public ETS table `{session_id, info, last_access, lost?, ttl_ms}` that callers read
  #   on every call (and whose `last_access` they refresh themselves); every other write goes
  #   through this GenServer.
  # * Owners: every process that adopts a session (uses it in a call, or in
  #   `SessionContext.with_session/2`) is monitored. Monitors are kept both ways:
  #   `monitors` maps a monitor ref to `{:owner, session_id, pid}`, `owners` maps a session
  #   to `%{pid => monitor_ref}`. When the last owner dies the session is released in
  #   Python (a `release_session` request to its worker), not just forgotten.
  # * The worker serves only sessions it was told to open (docs/PROTOCOL.md): this process
  #   sends `open_session` before a new row becomes visible and `release_session` after a
  #   row is removed, so every request that found the row reaches the worker in between.
  #   A request answered `session_not_found` while the row exists gets the session opened
  #   again (reopen/1).
  # * A sweep every `cleanup_interval` releases sessions idle for longer than their TTL.
  # * Each session is pinned to one worker, the least loaded at creation. This process
  #   monitors the workers it pinned sessions to; when one dies its sessions are marked
  #   lost (their refs died with the Python process). A lost row stays (until its owners
  #   die, its TTL passes or it is released) so that its refs answer :session_lost rather
  #   than :ref_released; lost rows do not count against `max_sessions`. An explicit lost
  #   session keeps answering :session_lost until Snakeport.release_session/1 (its owners
  #   must learn that its objects are gone). A lost AUTO-session does not block its
  #   process: the process's next call that does not use its refs gets a new auto-session
  #   (renew_auto/1), and only the old refs answer :session_lost.
  #
  # A second public ETS table holds one `{{session_id, pid}}` row per owner, so that a
  # caller can check "I already own this session" with one lookup: steady-state calls
  # never message this process.

  use GenServer
  require Logger

  alias Snakeport.{Error, Pool, Protocol, SessionContext, Telemetry, Worker}

  @table __MODULE__
  @owners Snakeport.Sessions.Owners
  @auto_key :"$snakeport_auto_session"
  @owned_key :"$snakeport_owned_session"
  # A caller refreshes last_access at most this often (ms): keeps hot calls write-free.
  @touch_granularity 100
  @call_timeout 60_000

  @type info :: %{
          id: String.t(),
          worker: Worker.entry(),
          index: non_neg_integer(),
          pid: pid(),
          max_refs: pos_integer(),
          ttl_seconds: pos_integer(),
          tags: term(),
          created_at: integer(),
          auto: boolean(),
          gen: pos_integer()
        }

  ## Caller side ---------------------------------------------------------------------------

  @doc false
  # Resolves the session a request runs in, adopting it (the caller becomes an owner):
  #
  #   1. the `:session` option, when given;
  #   2. else the process's current SessionContext;
  #   3. else the session of the refs the request uses (only if that session still exists:
  #      a released one answers :ref_released instead of being re-created);
  #   4. else the process's auto-session; when that was lost (its worker died), a new one.
  #
  # `timeout` bounds the wait for the session store when the session has to be adopted (the
  # call's own timeout: the store's answer is part of the call).
  @spec checkout(String.t() | SessionContext.t() | nil, String.t() | nil, timeout()) ::
          {:ok, info()} | {:error, Error.t()}
  def checkout(explicit, ref_session, timeout \\ @call_timeout) do
    cond do
      explicit != nil -> ensure(explicit, true, timeout)
      ctx = SessionContext.current() -> ensure(ctx, true, timeout)
      ref_session != nil -> ensure(ref_session, false, timeout)
      true -> auto(timeout)
    end
  end

  # The process's auto-session. A lost one (its worker died and this store marked it lost)
  # is replaced by a new auto-session on a live worker; the lost row is kept for its refs.
  # (A worker that died before the store handled its :DOWN is found by the request itself,
  # which cannot be written: the caller then renews the session with renew_auto/2.)
  defp auto(timeout) do
    id = auto_id()

    case ensure(id, :auto, timeout) do
      {:error, %Error{reason: :session_lost, details: %{session: ^id}}} ->
        renew_auto(id, timeout)

      other ->
        other
    end
  end

  @doc false
  # Whether `id` is the calling process's auto-session.
  @spec own_auto?(String.t()) :: boolean()
  def own_auto?(id), do: Process.get(@auto_key) == id

  @doc false
  # Replaces the process's auto-session `old_id` (lost with its worker) by a new one.
  @spec renew_auto(String.t(), timeout()) :: {:ok, info()} | {:error, Error.t()}
  def renew_auto(old_id, timeout) do
    if Process.get(@auto_key) == old_id, do: Process.delete(@auto_key)
    ensure(auto_id(), :auto, timeout)
  end

  @doc false
  # The process's auto-session id (created on first use).
  @spec auto_id() :: String.t()
  def auto_id do
    case Process.get(@auto_key) do
      nil ->
        id = "auto-" <> Integer.to_string(System.unique_integer([:positive]))
        Process.put(@auto_key, id)
        id

      id ->
        id
    end
  end

  defp ensure(%SessionContext{session_id: id} = ctx, create, timeout) do
    limits = %{max_refs: ctx.max_refs, ttl_seconds: ctx.ttl_seconds, tags: ctx.tags}
    fast(id, limits, create, timeout)
  end

  defp ensure(id, create, timeout) when is_binary(id), do: fast(id, nil, create, timeout)

  defp ensure(other, _create, _timeout) do
    {:error,
     Error.new(
       :bad_argument,
       "expected a session id (string) or %Snakeport.SessionContext{}, got: #{inspect(other)}"
     )}
  end

  defp fast(id, limits, create, timeout) do
    case :ets.lookup(@table, id) do
      [{^id, info, last, lost, _ttl}] ->
        cond do
          not owner?(id, info) -> adopt(id, limits, create, timeout)
          lost -> {:error, lost_error(info)}
          true -> touch(id, last) && {:ok, info}
        end

      [] ->
        adopt(id, limits, create, timeout)
    end
  rescue
    ArgumentError -> {:error, not_started()}
  end

  # Whether the caller owns the session of this row. The caller's last owned session is
  # cached in its process dictionary as {id, gen} (`gen` is unique per created session):
  # owner rows are only added by the process's own adopt, and removed only when the
  # session is dropped (a new session with that id has a new gen) or the process dies, so
  # a row with the cached gen is still owned. Otherwise one lookup of the owners table.
  defp owner?(id, %{gen: gen}) do
    case Process.get(@owned_key) do
      {^id, ^gen} ->
        true

      _ ->
        :ets.member(@owners, {id, self()}) and remember_owned(id, gen)
    end
  end

  defp remember_owned(id, gen) do
    Process.put(@owned_key, {id, gen})
    true
  end

  defp touch(id, last) do
    now = System.monotonic_time(:millisecond)
    if now - last >= @touch_granularity, do: :ets.update_element(@table, id, {3, now})
    true
  end

  defp adopt(id, limits, create, timeout) do
    case GenServer.call(__MODULE__, {:adopt, id, self(), limits, create}, timeout) do
      {:ok, info, lost, _created} ->
        remember_owned(id, info.gen)

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
    :exit, reason -> {:error, exit_error(reason, timeout)}
  end

  @doc false
  # Called when the worker answered a request of session `id` with :session_not_found. The
  # worker only knows opened sessions, so this means the session is not open there: either
  # the harness released it too (the request crossed its release_session: nothing to do,
  # the caller gets the error), or the worker lost it while the harness still has the row
  # (e.g. Snakeport.release_session/1 of an older session with the same id reached the
  # worker after the new one's open_session). In that case the session is opened again in
  # the worker (with empty refs), so that the harness never believes in a session that the
  # worker does not have; the failed request is not retried.
  @spec reopen(String.t()) :: :ok | :not_found
  def reopen(id) do
    GenServer.call(__MODULE__, {:reopen, id}, @call_timeout)
  catch
    :exit, _ -> :not_found
  end

  @doc false
  # The session row, without adopting it.
  @spec lookup(String.t()) :: {:ok, info(), boolean()} | :not_found | {:error, Error.t()}
  def lookup(id) do
    case :ets.lookup(@table, id) do
      [{^id, info, _last, lost, _ttl}] -> {:ok, info, lost}
      [] -> :not_found
    end
  rescue
    ArgumentError -> {:error, not_started()}
  end

  @doc false
  # Forgets the session now (event reason :explicit) and releases it in Python: this process
  # writes the `release_session` request in the same step as it drops the row, so that the
  # release happens even if the caller dies meanwhile. Returns the worker's reply frame,
  # `:lost` (the worker had died before) or `{:error, reason}` (it died before answering).
  @spec release(String.t()) ::
          {:ok, info(), {:reply, binary()} | :lost | {:error, term()}}
          | :not_found
          | {:error, Error.t()}
  def release(id), do: call({:release, id})

  @doc false
  # Harness-side description: {:ok, info, owners, last_access_system_ms, lost}.
  @spec describe(String.t()) ::
          {:ok, info(), [pid()], integer(), boolean()} | :not_found | {:error, Error.t()}
  def describe(id), do: call({:describe, id})

  @doc false
  # Session counts: total, and per worker pid.
  @spec counts() :: {:ok, non_neg_integer(), %{pid() => non_neg_integer()}} | {:error, Error.t()}
  def counts, do: call(:counts)

  defp call(request) do
    GenServer.call(__MODULE__, request, @call_timeout)
  catch
    :exit, reason -> {:error, exit_error(reason, @call_timeout)}
  end

  # The error for an exit of a GenServer.call to this process. Only a store that is not
  # running (or stopped during the call) means "not started"; a timeout is a timeout.
  defp exit_error({:timeout, _}, timeout) do
    Error.new(
      :timeout,
      "the session store (#{inspect(__MODULE__)}) did not answer within #{timeout} ms",
      %{timeout: timeout, server: __MODULE__}
    )
  end

  defp exit_error({reason, _}, _) when reason in [:noproc, :normal, :shutdown], do: not_started()
  defp exit_error({{:shutdown, _}, _}, _), do: not_started()
  defp exit_error({{:nodedown, _}, _}, _), do: not_started()

  defp exit_error({reason, _}, _timeout) do
    Error.new(
      :session_store_exited,
      "the session store (#{inspect(__MODULE__)}) exited during the call " <>
        "(#{inspect(reason)}); Snakeport is restarting it",
      %{reason: reason}
    )
  end

  defp exit_error(reason, timeout), do: exit_error({reason, nil}, timeout)

  @doc false
  def not_started do
    Error.new(
      :not_started,
      "Snakeport is not running: add {Snakeport, opts} to your application's supervision tree"
    )
  end

  @doc false
  def lost_error(info) do
    next =
      if info.auto,
        do: "Its refs are gone; its process's other calls run in a new auto-session.",
        else: "Call Snakeport.release_session/1 to start it afresh."

    Error.new(
      :session_lost,
      "session #{inspect(info.id)} was lost: its worker (#{info.index}) exited, and its " <>
        "Python objects with it. " <> next,
      %{session: info.id, worker: info.index}
    )
  end

  ## Server ----------------------------------------------------------------------------------

  @doc false
  def start_link(config), do: GenServer.start_link(__MODULE__, config, name: __MODULE__)

  @impl true
  def init(config) do
    :ets.new(@table, [
      :named_table,
      :public,
      :set,
      read_concurrency: true,
      write_concurrency: true
    ])

    :ets.new(@owners, [
      :named_table,
      :public,
      :set,
      read_concurrency: true,
      write_concurrency: true
    ])

    store = config.session_store
    schedule_sweep(store.cleanup_interval)
    # `lost`: how many rows are lost (they do not count against max_sessions).
    {:ok, %{store: store, owners: %{}, monitors: %{}, workers: %{}, releases: %{}, lost: 0}}
  end

  @impl true
  def handle_call({:adopt, id, pid, limits, create}, _from, state) do
    case :ets.lookup(@table, id) do
      [{^id, info, _last, lost, _ttl}] ->
        touch(id, 0)
        {:reply, {:ok, info, lost, false}, add_owner(state, id, pid)}

      [] when create == false ->
        {:reply, {:error, :not_found}, state}

      [] ->
        create(state, id, pid, limits, create == :auto)
    end
  end

  def handle_call({:reopen, id}, _from, state) do
    case :ets.lookup(@table, id) do
      [{^id, info, _last, false, _ttl}] ->
        open_in_worker(info)
        {:reply, :ok, state}

      _ ->
        {:reply, :not_found, state}
    end
  end

  def handle_call({:release, id}, from, state) do
    case drop(state, id, :explicit, false) do
      {nil, state} ->
        {:reply, :not_found, state}

      {{info, true}, state} ->
        pruned(state, :explicit, [id])
        {:reply, {:ok, info, :lost}, state}

      {{info, false}, state} ->
        pruned(state, :explicit, [id])
        # The reply (or the worker's :DOWN) comes to this process and is passed on to the
        # caller; this process never waits for it.
        case Worker.send_request(info.worker, &Protocol.encode({:release_session, &1, id})) do
          {:ok, {mref, _request_id, _entry}} ->
            {:noreply, %{state | releases: Map.put(state.releases, mref, {from, info})}}

          {:error, reason} ->
            {:reply, {:ok, info, {:error, reason}}, state}
        end
    end
  end

  def handle_call({:describe, id}, _from, state) do
    case :ets.lookup(@table, id) do
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
    {:reply, {:ok, :ets.info(@table, :size), per_worker}, state}
  end

  @impl true
  # The worker's reply to a release_session sent by handle_call({:release, _}).
  def handle_info({mref, frame}, %{releases: releases} = state)
      when is_map_key(releases, mref) do
    Process.demonitor(mref, [:flush])
    {{from, info}, releases} = Map.pop(releases, mref)
    GenServer.reply(from, {:ok, info, {:reply, frame}})
    {:noreply, %{state | releases: releases}}
  end

  # The worker of a release_session in flight died before it answered.
  def handle_info({:DOWN, mref, :process, _pid, reason}, %{releases: releases} = state)
      when is_map_key(releases, mref) do
    {{from, info}, releases} = Map.pop(releases, mref)
    GenServer.reply(from, {:ok, info, {:error, {:down, reason}}})
    {:noreply, %{state | releases: releases}}
  end

  # An owner or a worker died.
  def handle_info({:DOWN, mref, :process, _pid, _reason}, state) do
    case Map.pop(state.monitors, mref) do
      {{:owner, id, pid}, monitors} ->
        state = %{state | monitors: monitors}
        :ets.delete(@owners, {id, pid})
        owners = state.owners |> Map.get(id, %{}) |> Map.delete(pid)

        if map_size(owners) == 0 do
          {_, state} = drop(state, id, :owner_down, true)
          pruned(state, :owner_down, [id])
          {:noreply, state}
        else
          {:noreply, %{state | owners: Map.put(state.owners, id, owners)}}
        end

      {{:worker, wpid, index}, monitors} ->
        {:noreply, worker_down(%{state | monitors: monitors}, wpid, index)}

      {nil, _} ->
        {:noreply, state}
    end
  end

  def handle_info(:sweep, state) do
    now = System.monotonic_time(:millisecond)

    expired =
      :ets.select(@table, [
        {{:"$1", :_, :"$2", :_, :"$3"}, [{:<, {:+, :"$2", :"$3"}, now}], [:"$1"]}
      ])

    {released, state} =
      Enum.reduce(expired, {[], state}, fn id, {acc, state} ->
        case drop(state, id, :ttl, true) do
          {nil, state} -> {acc, state}
          {_, state} -> {[id | acc], state}
        end
      end)

    if released != [], do: pruned(state, :ttl, Enum.reverse(released))
    schedule_sweep(state.store.cleanup_interval)
    {:noreply, state}
  end

  def handle_info(_msg, state), do: {:noreply, state}

  defp schedule_sweep(interval), do: Process.send_after(self(), :sweep, interval)

  defp create(state, id, pid, limits, auto) do
    %{max_sessions: max, strict_mode: strict} = state.store
    # Live sessions: lost rows hold no Python objects and must not keep new ones out.
    count = :ets.info(@table, :size) - state.lost

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
        limits = limits || %{}

        info = %{
          id: id,
          worker: entry,
          index: entry.index,
          pid: entry.pid,
          max_refs: Map.get(limits, :max_refs, 10_000),
          ttl_seconds: Map.get(limits, :ttl_seconds, state.store.default_ttl),
          tags: Map.get(limits, :tags, %{}),
          created_at: System.system_time(:millisecond),
          auto: auto,
          gen: System.unique_integer([:positive, :monotonic])
        }

        ttl_ms = info.ttl_seconds * 1000
        # The worker only serves opened sessions: open it before the row becomes visible,
        # so that any request of any process that finds the row reaches the worker after
        # this open_session (both go through the same port, this one first).
        open_in_worker(info)
        :ets.insert(@table, {id, info, System.monotonic_time(:millisecond), false, ttl_ms})
        state = state |> add_owner(id, pid) |> add_load(entry)
        current = count + 1

        Telemetry.execute([:snakeport, :session, :created], %{current_sessions: current}, %{
          session_id: id,
          worker: entry.index,
          tags: info.tags,
          auto: auto
        })

        if current * 100 > max * 80, do: accumulation(state, current, :threshold_warning)
        {:reply, {:ok, info, false, true}, state}

      true ->
        error =
          Error.new(:no_workers, "no Python worker is running (they are starting or restarting)")

        {:reply, {:error, error}, state}
    end
  end

  defp open_in_worker(info) do
    opts = %{max_refs: info.max_refs, ttl_seconds: info.ttl_seconds, tags: info.tags}
    Worker.cast(info.worker, &Protocol.encode({:open_session, &1, info.id, opts}))
  end

  defp accumulation(state, current, reason) do
    %{max_sessions: max, strict_mode: strict} = state.store
    utilization = Float.round(current * 100 / max, 2)

    Telemetry.execute(
      [:snakeport, :session, :accumulation_warning],
      %{current_sessions: current, max_sessions: max, utilization: utilization},
      %{reason: reason, strict_mode: strict}
    )

    if strict and reason == :threshold_warning do
      Logger.warning(
        "[Snakeport] session accumulation: #{current} of #{max} sessions in use " <>
          "(#{utilization}%, above 80%). Sessions are released when their last owner " <>
          "process dies, on Snakeport.release_session/1, or after their TTL; check for " <>
          "long-lived processes that keep adopting new sessions."
      )
    end
  end

  # The least-loaded live worker: fewest sessions, then fewest requests in flight.
  defp pick_worker(state) do
    Pool.entries()
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

  defp add_owner(state, id, pid) do
    owners = Map.get(state.owners, id, %{})

    if Map.has_key?(owners, pid) do
      state
    else
      mref = Process.monitor(pid)
      :ets.insert(@owners, {{id, pid}})

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

  # Removes a session: its row, its owners' monitors, its worker load. With `notify`, tells
  # its worker to release it (unless the worker is gone). Returns {{info, lost} | nil, state}.
  defp drop(state, id, reason, notify) do
    case :ets.take(@table, id) do
      [{^id, info, _last, lost, _ttl}] ->
        {owners, all_owners} = Map.pop(state.owners, id, %{})

        # Demonitor with :flush: a :DOWN already queued for these owners is discarded, so it
        # cannot later be taken for an owner of a new session with the same id.
        monitors =
          Enum.reduce(owners, state.monitors, fn {pid, mref}, acc ->
            Process.demonitor(mref, [:flush])
            :ets.delete(@owners, {id, pid})
            Map.delete(acc, mref)
          end)

        state = %{state | owners: all_owners, monitors: monitors}

        state =
          if lost, do: %{state | lost: max(state.lost - 1, 0)}, else: sub_load(state, info.pid)

        if notify and not lost do
          Worker.cast(info.worker, &Protocol.encode({:release_session, &1, id}))
        end

        Telemetry.execute(
          [:snakeport, :session, :released],
          %{remaining_sessions: :ets.info(@table, :size)},
          %{session_id: id, worker: info.index, reason: reason, lost: lost}
        )

        {{info, lost}, state}

      [] ->
        {nil, state}
    end
  end

  defp pruned(_state, reason, ids) do
    Telemetry.execute(
      [:snakeport, :session, :pruned],
      %{count: length(ids), remaining_sessions: :ets.info(@table, :size)},
      %{reason: reason, session_ids: ids, table_name: @table}
    )
  end

  defp worker_down(state, wpid, index) do
    {_, workers} = Map.pop(state.workers, wpid)
    ids = :ets.select(@table, [{{:"$1", %{pid: wpid}, :_, false, :_}, [], [:"$1"]}])
    Enum.each(ids, &:ets.update_element(@table, &1, {4, true}))

    if ids != [] do
      Telemetry.execute([:snakeport, :session, :lost], %{count: length(ids)}, %{
        worker: index,
        session_ids: ids
      })
    end

    %{state | workers: workers, lost: state.lost + length(ids)}
  end
end
