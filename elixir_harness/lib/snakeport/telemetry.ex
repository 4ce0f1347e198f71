defmodule Snakeport.Telemetry do
  @moduledoc """
  Snakeport's events, and a small built-in handler API to observe them.

  Every event is emitted through `:telemetry.execute/3` when the `:telemetry` library is
  loaded in the VM, and always through the handlers attached here with `attach/4` or
  `attach_many/4` (same shape as `:telemetry`'s: a 4-arity function receiving the event
  name, measurements, metadata and the handler's config). A handler that raises is detached
  and the failure is logged, as `:telemetry` does. Handlers run in the process that emits
  the event; keep them short.

  ## Events

  The handler table is global to the VM: a handler attached to an event sees it for every
  Snakeport instance. Every event's metadata has `instance`, the name of the instance that
  emitted it (`Snakeport` unless it was started with `:name`); filter on it to observe one.
  Every event's metadata also has `node`: the node of the worker it is about (a call in a
  session that lives on another node of the cluster names that node, as does `:lost` for
  the sessions of a worker of another node), else the node that emitted it. Each node
  emits its own events (a worker's events on its node).

  | Event | Measurements | Metadata (besides `instance`) |
  |---|---|---|
  | `[:snakeport, :call, :start]` | `system_time`, `monotonic_time` | `op`, `module`, `function`, `name`, `session_id`, `worker` |
  | `[:snakeport, :call, :stop]` | `duration` (native units), `monotonic_time` | as `:start` |
  | `[:snakeport, :call, :exception]` | `duration`, `monotonic_time` | as `:start`, plus `kind: :error`, `reason` (the `%Snakeport.Error{}`) |
  | `[:snakeport, :session, :created]` | `current_sessions` | `session_id`, `worker`, `tags`, `auto`, `kind` (`:auto`, `:owned` or `:store`) |
  | `[:snakeport, :session, :open_failed]` | `%{}` | `session_id`, `worker`, `error` (the worker refused to open the session, or died first), `reopen` |
  | `[:snakeport, :session, :released]` | `remaining_sessions` | `session_id`, `worker`, `reason`, `lost` |
  | `[:snakeport, :session, :closed]` | `refs` (refs the worker released with the session) | `session_id`, `worker`, `reason` |
  | `[:snakeport, :session, :close_failed]` | `%{}` | `session_id`, `worker`, `reason`, `error` |
  | `[:snakeport, :session, :pruned]` | `count`, `remaining_sessions` | `reason` (`:ttl`, `:owner_down`, `:explicit`), `session_ids`, `table_name` |
  | `[:snakeport, :session, :accumulation_warning]` | `current_sessions`, `max_sessions`, `utilization` (percent) | `reason` (`:threshold_warning`, `:quota_exceeded`), `strict_mode` |
  | `[:snakeport, :session, :lost]` | `count` | `worker`, `session_ids` (also on a node whose processes use sessions of another node's worker that died, or whose node went down or was disconnected: `node` names it) |
  | `[:snakeport, :cluster, :node_up]` | `system_time` | `node`: another node started the instance, or connected (its workers may now take sessions placed from here) |
  | `[:snakeport, :cluster, :node_down]` | `system_time` | `node`: that node stopped the instance, went down or was disconnected |
  | `[:snakeport, :worker, :started]` | `system_time` | `worker`, `os_pid`, `python`, `snakeport` |
  | `[:snakeport, :worker, :exited]` | `system_time` | `worker`, `os_pid`, `reason` (`{:shutdown, {:stuck_killed, status}}` for a stuck worker that was killed) |
  | `[:snakeport, :worker, :stuck]` | `system_time`, `overdue` (cancelled requests not ended) | `worker`, `os_pid`, `request_ids` |
  | `[:snakeport, :worker, :recovered]` | `system_time`, `stuck_ms` | `worker`, `os_pid` |
  | `[:snakeport, :worker, :reply_dropped]` | `%{}` | `worker`, `os_pid`, `request_id`, `outcome` (`:ok` or `:error`), `error` (the `%Snakeport.Error{}`, or `nil`) |
  | `[:snakeport, :worker, :refs_pruned]` | `count` | `session`, `reason: :ttl`, `ref_ids`, `worker`, `os_pid` |
  | `[:snakeport, :worker, :refs_evicted]` | `count` | `session`, `reason: :overflow`, `ref_ids`, `worker`, `os_pid` |
  | `[:snakeport, :worker, :warning]` | `%{}` | `message`, ..., `worker`, `os_pid` |
  | `[:snakeport, :worker, :protocol_error]` | `%{}` | `reason`, `message`, `worker`, `os_pid` |
  | `[:snakeport, :worker, :log]` | `%{}`, or `dropped` | `level` (Python's number), `source`, `message`, `logger`, `session`, `request_id` (when known), `worker`, `os_pid`: one line or record of Python's output, emitted after its `Logger` call |

  Every `[:snakeport, :call, :start]` is followed by exactly one `:stop` (the call returned
  `{:ok, _}`) or `:exception` (it returned or raised a `%Snakeport.Error{}`).

  No reply of a worker is thrown away unseen. `:released` says the harness forgot a session
  (its owners died, it was released, or its TTL passed); the worker's answer to the
  `release_session` that follows is `:closed` (with the count of refs it released) or
  `:close_failed`. `:reply_dropped` is a reply nobody waits for any more: the late reply
  of a call that timed out, and the replies to the `cancel` sent after a timeout and to the
  `shutdown` sent when a worker stops.

  `:stuck` says that a request the harness cancelled (its caller timed out or died) has not
  ended within `:cancel_grace`: the worker gets no new sessions until it does
  (`:recovered`), or until it is killed `:stuck_timeout` later (`:exited`, then `:started`
  for its replacement).

  ## Example

      iex> test_pid = self()
      iex> :ok = Snakeport.Telemetry.attach("doc-handler", [:my, :event], fn event, m, meta, cfg ->
      ...>   send(test_pid, {event, m, meta, cfg})
      ...> end, :my_config)
      iex> Snakeport.Telemetry.execute([:my, :event], %{count: 1}, %{reason: :demo})
      :ok
      iex> receive do msg -> msg end
      {[:my, :event], %{count: 1}, %{reason: :demo}, :my_config}
      iex> Snakeport.Telemetry.detach("doc-handler")
      :ok
  """

  require Logger

  @table __MODULE__
  @telemetry_key {__MODULE__, :telemetry_loaded?}

  @compile {:no_warn_undefined, :telemetry}

  @type handler_id :: term()
  @type event_name :: [atom(), ...]
  @type handler_function :: (event_name(), map(), map(), term() -> any())

  @doc """
  Attaches `fun` to `event_name` under `handler_id`.

  Returns `{:error, :already_exists}` when a handler with that id is attached.
  """
  @spec attach(handler_id(), event_name(), handler_function(), term()) ::
          :ok | {:error, :already_exists}
  def attach(handler_id, event_name, fun, config \\ nil) do
    attach_many(handler_id, [event_name], fun, config)
  end

  @doc """
  Attaches `fun` to each event of `event_names` under one `handler_id`.
  """
  @spec attach_many(handler_id(), [event_name()], handler_function(), term()) ::
          :ok | {:error, :already_exists}
  def attach_many(handler_id, event_names, fun, config \\ nil)
      when is_list(event_names) and is_function(fun, 4) do
    Enum.each(event_names, fn
      [_ | _] = name ->
        if not Enum.all?(name, &is_atom/1) do
          raise ArgumentError, "expected an event name (a list of atoms), got: #{inspect(name)}"
        end

      other ->
        raise ArgumentError, "expected an event name (a list of atoms), got: #{inspect(other)}"
    end)

    if :ets.match(@table, {:_, handler_id, :_, :_}) != [] do
      {:error, :already_exists}
    else
      :ets.insert(@table, Enum.map(event_names, &{&1, handler_id, fun, config}))
      Enum.each(event_names, &sync_listened/1)
      :ok
    end
  end

  @doc """
  Detaches the handler `handler_id` from every event.
  """
  @spec detach(handler_id()) :: :ok | {:error, :not_found}
  def detach(handler_id) do
    if :ets.match(@table, {:_, handler_id, :_, :_}) == [] do
      {:error, :not_found}
    else
      events = :ets.match(@table, {:"$1", handler_id, :_, :_})
      :ets.match_delete(@table, {:_, handler_id, :_, :_})
      Enum.each(events, fn [event] -> sync_listened(event) end)
      :ok
    end
  end

  @doc """
  Lists the handlers attached through this module whose event name starts with `prefix`.
  """
  @spec list_handlers([atom()]) :: [%{id: handler_id(), event_name: event_name(), config: term()}]
  def list_handlers(prefix \\ []) when is_list(prefix) do
    for {event, id, _fun, config} <- :ets.tab2list(@table),
        List.starts_with?(event, prefix),
        do: %{id: id, event_name: event, config: config}
  end

  @doc """
  Emits an event: through `:telemetry` when it is loaded, and to the handlers attached here.
  """
  @spec execute(event_name(), map(), map()) :: :ok
  def execute(event_name, measurements, metadata) do
    # Snakeport's events (they name their instance) name their node too: the node of the
    # worker or session they are about when it is another one, else this one.
    metadata =
      if is_map_key(metadata, :instance), do: Map.put_new(metadata, :node, node()), else: metadata

    if telemetry_loaded?() do
      :telemetry.execute(event_name, measurements, metadata)
    end

    handlers =
      try do
        :ets.lookup(@table, event_name)
      rescue
        ArgumentError -> []
      end

    Enum.each(handlers, fn {_, id, fun, config} ->
      try do
        fun.(event_name, measurements, metadata, config)
      catch
        kind, reason ->
          detach(id)

          Logger.error(
            "Snakeport.Telemetry handler #{inspect(id)} failed on #{inspect(event_name)} " <>
              "and was detached: " <> Exception.format(kind, reason, __STACKTRACE__)
          )
      end
    end)
  end

  @doc false
  # True when an event whose name starts with `[a, b]` would reach a handler: one is
  # attached here, or `:telemetry` is loaded (it has its own handlers). Lets hot paths skip
  # clocks and measurement maps when nobody listens: two :persistent_term reads.
  @spec listening?([atom()]) :: boolean()
  def listening?([a, b]) do
    telemetry_loaded?() or :persistent_term.get({__MODULE__, a, b}, false)
  end

  # Keeps the :persistent_term flag of the event's two-atom prefix ("has a handler here")
  # in line with the table. Written on attach/detach only; booleans are immediates, so
  # replacing one does not trigger the global GC of a persistent_term update. Re-checked
  # after each write, so that concurrent attach/detach calls settle on the table's state.
  defp sync_listened([a, b | _]) do
    key = {__MODULE__, a, b}
    want = :ets.match(@table, {[a, b | :_], :_, :_, :_}, 1) != :"$end_of_table"

    if :persistent_term.get(key, false) != want do
      :persistent_term.put(key, want)
      sync_listened([a, b])
    end

    :ok
  end

  defp sync_listened(_shorter), do: :ok

  # Cached in :persistent_term: written once per VM, read on every event.
  defp telemetry_loaded? do
    case :persistent_term.get(@telemetry_key, nil) do
      nil ->
        loaded = Code.ensure_loaded?(:telemetry) and function_exported?(:telemetry, :execute, 3)
        :persistent_term.put(@telemetry_key, loaded)
        loaded

      loaded ->
        loaded
    end
  end

  @doc false
  # Called by the application's supervisor in its init: the supervisor owns the table.
  def create_table do
    :ets.new(@table, [:named_table, :public, :duplicate_bag, read_concurrency: true])
    :ok
  end
end
