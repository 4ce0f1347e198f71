defmodule Snakeport.Pool do
  @moduledoc false
  # The registry of running workers: a public ETS table `{index, entry, ready_info}` read by
  # callers (stats) and by the session store (worker choice), owned by this process.
  # Workers register once their Python process is ready; this process monitors them and
  # drops the row of a worker that dies, even when it is killed brutally.

  use GenServer

  @table __MODULE__

  @doc false
  def start_link(config), do: GenServer.start_link(__MODULE__, config, name: __MODULE__)

  @doc false
  @spec register(Snakeport.Worker.entry(), map()) :: :ok
  def register(entry, info), do: GenServer.call(__MODULE__, {:register, entry, info})

  @doc false
  # Called by a worker on its way down, so that no new session picks it meanwhile.
  @spec unregister(Snakeport.Worker.entry()) :: :ok
  def unregister(%{index: index, pid: pid}) do
    :ets.select_delete(@table, [{{index, %{pid: pid}, :_}, [], [true]}])
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Entries of the live workers, by index.
  @spec entries() :: [Snakeport.Worker.entry()]
  def entries do
    @table |> :ets.tab2list() |> Enum.sort() |> Enum.map(fn {_, entry, _} -> entry end)
  rescue
    ArgumentError -> []
  end

  @doc false
  @spec infos() :: [{Snakeport.Worker.entry(), map()}]
  def infos do
    @table |> :ets.tab2list() |> Enum.sort() |> Enum.map(fn {_, entry, info} -> {entry, info} end)
  rescue
    ArgumentError -> []
  end

  @impl true
  def init(_config) do
    :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
    {:ok, %{}}
  end

  @impl true
  def handle_call({:register, %{index: index, pid: pid} = entry, info}, _from, monitors) do
    :ets.insert(@table, {index, entry, info})
    {:reply, :ok, Map.put(monitors, Process.monitor(pid), {index, pid})}
  end

  @impl true
  def handle_info({:DOWN, mref, :process, _pid, _reason}, monitors) do
    {{index, pid}, monitors} = Map.pop(monitors, mref)
    :ets.select_delete(@table, [{{index, %{pid: pid}, :_}, [], [true]}])
    {:noreply, monitors}
  end
end
