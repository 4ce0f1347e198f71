defmodule Snakeport.Pool do
  @moduledoc false
  # The registry of an instance's ready workers: a public ETS table `{index, entry,
  # ready_info}` read by callers (stats) and by the session store (worker choice), owned by
  # this process. Workers register once their Python process is ready; this process
  # monitors them and drops the row of a worker that dies, even when it is killed brutally.
  #
  # It also gates the instance's start (await_start/2, the last child of the instance's
  # supervisor): the workers do their handshakes in parallel, each in its own process, and
  # the instance's start returns once all of them registered, or fails with the first
  # handshake failure a worker reports (start_failed/3). Later restarts of a worker are
  # not waited for: until a restarted worker is ready, new sessions go to the others (or
  # fail with :no_workers when none is ready).

  use GenServer

  alias Snakeport.{Defaults, Error}

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
  # Called by a worker on its way down, so that no new session picks it meanwhile.
  @spec unregister(atom(), Snakeport.Worker.entry()) :: :ok
  def unregister(table, %{index: index, pid: pid}) do
    :ets.select_delete(table, [{{index, %{pid: pid}, :_}, [], [true]}])
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Entries of the ready workers, by index.
  @spec entries(atom()) :: [Snakeport.Worker.entry()]
  def entries(table) do
    table |> :ets.tab2list() |> Enum.sort() |> Enum.map(fn {_, entry, _} -> entry end)
  rescue
    ArgumentError -> []
  end

  @doc false
  @spec infos(atom()) :: [{Snakeport.Worker.entry(), map()}]
  def infos(table) do
    table |> :ets.tab2list() |> Enum.sort() |> Enum.map(fn {_, entry, info} -> {entry, info} end)
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
    {:ok, %{table: names.pool_table, monitors: %{}, await: nil, failure: nil}}
  end

  @impl true
  def handle_call({:register, %{index: index, pid: pid} = entry, info}, _from, state) do
    :ets.insert(state.table, {index, entry, info})
    monitors = Map.put(state.monitors, Process.monitor(pid), {index, pid})
    {:reply, :ok, check_start(%{state | monitors: monitors})}
  end

  def handle_call({:await, size}, from, state) do
    {:noreply, check_start(%{state | await: {from, size}})}
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
    :ets.select_delete(state.table, [{{index, %{pid: pid}, :_}, [], [true]}])
    {:noreply, %{state | monitors: monitors}}
  end

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
