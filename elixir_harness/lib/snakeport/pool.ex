defmodule Snakeport.Pool do
  @moduledoc false
  # The registry of an instance's ready workers: a public ETS table `{index, entry,
  # ready_info, stuck_since, stats}` read by callers (stats) and by the session store
  # (worker choice), owned by this process. Workers register once their Python process is
  # ready; this process monitors them and drops the row of a worker that dies, even when
  # it is killed brutally. A registered worker also joins the :workers group of the
  # instance's :pg scope, where the other nodes of the cluster see it (Snakeport.Cluster);
  # it leaves when it unregisters, and :pg drops it when it dies. It is also the ETS heir of
  # each worker's `pending` table: a worker process killed outright (no terminate/2) leaves
  # it here, and its callers in flight are told at once (Snakeport.Worker.notify_pending/2).
  #
  # The last two elements are written without this process: `stuck_since` (monotonic ms, or
  # nil) by the worker itself, which marks itself stuck when a request it cancelled does not
  # end (Snakeport.Worker, liveness), so that the session store places no new session there;
  # `stats` (`{monotonic ms, map}`, or nil) by Snakeport.stats/1, which keeps each worker's
  # last answer so that a worker that cannot answer now is still described.
  #
  # It also gates the instance's start (await_start/2, the last child of the instance's
  # supervisor): the workers do their handshakes in parallel, each in its own process, and
  # the instance's start returns once all of them registered, or fails with the first
  # handshake failure a worker reports (start_failed/3). Later restarts of a worker are
  # not waited for: until a restarted worker is ready, new sessions go to the others (or
  # fail with :no_workers when none is ready).
  #
  # And it paces restarts (restart_delay/3): every worker process asks, when it starts, how
  # long to wait before it starts Python. The first start waits nothing, and so does the
  # restart of a worker that was ready for at least Defaults.restart_reset/0 ms; after a
  # quicker exit the wait is Defaults.restart_backoff_base/0 ms, doubled after each further
  # quick exit, up to :max_restart_backoff. A worker that keeps failing thus keeps being
  # retried at a bounded rate, without ever exhausting the restart intensity of the worker
  # supervisor (sized from that rate, see Snakeport.Supervisor) and so without taking its
  # healthy siblings down.

  use GenServer

  alias Snakeport.{Defaults, Error, Telemetry}

  @backoff_base Defaults.restart_backoff_base()
  @restart_reset Defaults.restart_reset()

  @doc false
  def start_link(%{names: names}),
    do: GenServer.start_link(__MODULE__, names, name: names.pool)

  @doc false
  @spec register(atom(), Snakeport.Worker.entry(), map()) :: :ok
  def register(pool, entry, info), do: GenServer.call(pool, {:register, entry, info})

  @doc false
  # Called by a worker whose handshake failed, before it stops.
  @spec start_failed(atom(), non_neg_integer(), Error.t()) :: :ok
  def start_failed(pool, index, error), do: GenServer.cast(pool, {:start_failed, index, error})

  @doc false
  # Called by a worker process when it starts: the ms to wait before starting Python.
  @spec restart_delay(atom(), non_neg_integer(), pos_integer()) :: non_neg_integer()
  def restart_delay(pool, index, max_backoff),
    do: GenServer.call(pool, {:starting, index, max_backoff})

  @doc false
  # Called by a worker on its way down, so that no new session picks it meanwhile.
  @spec unregister(atom(), Snakeport.Worker.entry()) :: :ok
  def unregister(table, %{index: index, pid: pid} = entry) do
    leave_cluster(entry)
    :ets.select_delete(table, [{{index, %{pid: pid}, :_, :_, :_}, [], [true]}])
    :ok
  rescue
    ArgumentError -> :ok
  end

  # The worker leaves the :workers group of its instance's cluster (Snakeport.Cluster), so
  # that other nodes place no session there (pg drops a dead process by itself).
  defp leave_cluster(%{instance: instance, pid: pid}) do
    :pg.leave(Snakeport.Instance.names(instance).scope, :workers, pid)
  catch
    _, _ -> :ok
  end

  @doc false
  # Marks the ready worker `index` stuck since `since` (monotonic ms), or not stuck (nil).
  # Called by the worker itself (the only writer of its row's `stuck_since`).
  @spec set_stuck(atom(), non_neg_integer(), integer() | nil) :: :ok
  def set_stuck(table, index, since) do
    :ets.update_element(table, index, {4, since})
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Keeps the stats a worker answered (only in the row of that very worker process).
  @spec cache_stats(atom(), Snakeport.Worker.entry(), map()) :: :ok
  def cache_stats(table, %{index: index, pid: pid}, stats) do
    value = {System.monotonic_time(:millisecond), stats}

    :ets.select_replace(table, [
      {{index, :"$1", :"$2", :"$3", :_}, [{:==, {:map_get, :pid, :"$1"}, pid}],
       [{{index, :"$1", :"$2", :"$3", {:const, value}}}]}
    ])

    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Entries of the ready workers, by index.
  @spec entries(atom()) :: [Snakeport.Worker.entry()]
  def entries(table), do: table |> rows() |> Enum.map(& &1.entry)

  @doc false
  # Entries of the ready workers that are not stuck: where new sessions may go.
  @spec available(atom()) :: [Snakeport.Worker.entry()]
  def available(table) do
    for %{entry: entry, stuck_since: nil} <- rows(table), do: entry
  end

  @doc false
  # Every ready worker's row, by index: entry, ready info, stuck_since, cached stats.
  @spec rows(atom()) :: [
          %{
            entry: Snakeport.Worker.entry(),
            info: map(),
            stuck_since: integer() | nil,
            stats: {integer(), map()} | nil
          }
        ]
  def rows(table) do
    table
    |> :ets.tab2list()
    |> Enum.sort()
    |> Enum.map(fn {_, entry, info, stuck, stats} ->
      %{entry: entry, info: info, stuck_since: stuck, stats: stats}
    end)
  rescue
    ArgumentError -> []
  end

  @doc false
  # The start function of the instance supervisor's last child (restart: :temporary): runs
  # in the supervisor while it starts, returns :ignore once every worker is ready, or the
  # first handshake failure (which fails the instance's start).
  @spec await_start(map(), map()) :: :ignore | {:error, Error.t()}
  def await_start(names, config) do
    timeout = config.startup_timeout + Defaults.startup_margin()

    try do
      GenServer.call(names.pool, {:await, config.pool_size}, timeout)
    catch
      :exit, {:timeout, _} ->
        {:error,
         Error.new(
           :worker_start_failed,
           "the workers were not ready within #{timeout} ms (option :startup_timeout)",
           %{startup_timeout: config.startup_timeout}
         )}
    end
    |> case do
      :ok -> :ignore
      {:error, %Error{}} = error -> error
    end
  end

  @impl true
  def init(names) do
    :ets.new(names.pool_table, [:named_table, :public, :set, read_concurrency: true])

    {:ok,
     %{
       table: names.pool_table,
       scope: names.scope,
       monitors: %{},
       await: nil,
       failure: nil,
       # index => %{ready_at: monotonic ms | nil, quick: consecutive quick exits}
       starts: %{}
     }}
  end

  @impl true
  def handle_call({:register, %{index: index, pid: pid} = entry, info}, _from, state) do
    :ets.insert(state.table, {index, entry, info, nil, nil})
    monitors = Map.put(state.monitors, Process.monitor(pid), {index, pid})
    # Other nodes of the instance's cluster may place sessions there from now on.
    :ok = :pg.join(state.scope, :workers, pid)

    # Emitted here, in this order: the worker is available when its :started arrives (a
    # call made on the event finds it), and the event precedes the end of the instance's
    # start (check_start/1 below), so a handler attached once the instance is up sees only
    # later workers' events.
    Telemetry.execute(
      [:snakeport, :worker, :started],
      %{system_time: System.system_time()},
      %{
        instance: entry.instance,
        worker: index,
        os_pid: entry.os_pid,
        python: Map.get(info, :python),
        snakeport: Map.get(info, :snakeport)
      }
    )

    starts =
      Map.update(state.starts, index, %{ready_at: now(), quick: 0}, &%{&1 | ready_at: now()})

    {:reply, :ok, check_start(%{state | monitors: monitors, starts: starts})}
  end

  def handle_call({:await, size}, from, state) do
    {:noreply, check_start(%{state | await: {from, size}})}
  end

  def handle_call({:starting, index, max_backoff}, _from, state) do
    {delay, quick} =
      case state.starts do
        %{^index => %{ready_at: ready_at, quick: quick}} ->
          if ready_at != nil and now() - ready_at >= @restart_reset do
            {0, 0}
          else
            base = min(@backoff_base, max_backoff)
            {min(max_backoff, base * Integer.pow(2, min(quick, 30))), quick + 1}
          end

        %{} ->
          {0, 0}
      end

    starts = Map.put(state.starts, index, %{ready_at: nil, quick: quick})
    {:reply, delay, %{state | starts: starts}}
  end

  @impl true
  def handle_cast({:start_failed, _index, error}, state) do
    # Only the first failure matters, and only to a start still waiting.
    state = if state.failure, do: state, else: %{state | failure: error}
    {:noreply, check_start(state)}
  end

  @impl true
  def handle_info({:DOWN, mref, :process, _pid, _reason}, state) do
    {{index, pid}, monitors} = Map.pop(state.monitors, mref)
    :ets.select_delete(state.table, [{{index, %{pid: pid}, :_, :_, :_}, [], [true]}])
    {:noreply, %{state | monitors: monitors}}
  end

  # A worker process was killed (no terminate/2): its callers in flight learn it now, as a
  # :DOWN of the worker would have told them (Snakeport.Worker, *Reply tags*).
  def handle_info({:"ETS-TRANSFER", pending, _worker, :snakeport_pending}, state) do
    Snakeport.Worker.notify_pending(pending, :killed)
    :ets.delete(pending)
    {:noreply, state}
  end

  defp now, do: System.monotonic_time(:millisecond)

  defp check_start(%{await: {from, size}} = state) do
    cond do
      state.failure != nil ->
        GenServer.reply(from, {:error, state.failure})
        %{state | await: :done}

      :ets.info(state.table, :size) >= size ->
        GenServer.reply(from, :ok)
        %{state | await: :done}

      true ->
        state
    end
  end

  defp check_start(state), do: state
end
