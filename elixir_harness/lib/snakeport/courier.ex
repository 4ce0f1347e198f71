defmodule Snakeport.Courier do
  @moduledoc false
  # Carries the session store's requests (open_session, release_session) to one worker.
  #
  # The store never writes to a port itself: `Port.command/2` suspends its caller while the
  # port is busy (a worker that does not read its stdin, e.g. in C code holding the GIL, or
  # one behind a queue of large requests), and one busy port must not stall every session of
  # the instance. Each worker links one courier (started when the worker is ready; they
  # stop together), and the store sends it requests as messages. The courier writes them
  # in the order the store sent them, so that the store's order (a session's release
  # before a new session with the same id is opened, a reopen before a later release) is
  # the order the worker sees. It never waits for a reply: each reply comes back to it
  # through the request's alias, is decoded here and sent to the store as
  # `{tag, {:ok, value} | {:error, %Snakeport.Error{}}}`. `tag` is the store's monitor of
  # this process (an alias): if the courier (hence its worker) dies first, the store gets
  # `{:DOWN, tag, ...}` instead.
  #
  # It also writes the requests of callers of other nodes (Snakeport.Worker, *Other
  # nodes*), which cannot write to this node's port: `{:forward, alias, caller, request,
  # session}` is written with Worker.forward/5 (its reply goes from the worker straight to
  # the caller's alias; a request that cannot be written gets `{alias, {:error, reason}}`
  # back). The courier monitors each such caller while it may have requests in flight:
  # when one dies, or its node goes down or disconnects (:noconnection), its requests are
  # cancelled in Python; `{:cancel_forwarded, alias, job?}` cancels the request of a
  # caller that timed out. Every Defaults.remote_caller_prune/0 ms the callers without a
  # request in flight stop being monitored.

  use GenServer
  require Logger

  alias Snakeport.{Client, Defaults, Protocol, Worker}

  @prune Defaults.remote_caller_prune()

  @doc false
  # Asks the courier to send `request` (a Snakeport.Protocol builder's result) for session
  # `session`. Returns the tag of the answer that will reach the calling process.
  @spec request(pid(), Protocol.request(), String.t()) :: reference()
  def request(courier, request, session) do
    tag = :erlang.monitor(:process, courier, [{:alias, :demonitor}])
    send(courier, {:request, tag, request, session})
    tag
  end

  @doc false
  def start_link(entry), do: GenServer.start_link(__MODULE__, entry)

  @impl true
  def init(entry) do
    Process.send_after(self(), :prune, @prune)
    # callers: a remote caller pid => its monitor; watched: the monitor => the pid
    {:ok, %{entry: entry, pending: %{}, callers: %{}, watched: %{}}}
  end

  @impl true
  # A request of the session store: write it now; its reply comes to this process.
  def handle_info({:request, tag, request, session}, state) do
    case Worker.send_request(state.entry, request, session) do
      {:ok, {mref, _id, _entry, _job}} ->
        {:noreply, %{state | pending: Map.put(state.pending, mref, tag)}}

      {:error, reason} ->
        send(tag, {tag, {:error, Client.transport_error(reason, nil, nil)}})
        {:noreply, state}
    end
  end

  # A caller of this node found the port busy: its request is written here, so that the
  # caller waits for its reply with its deadline instead of for the port (Worker.write/5).
  def handle_info({:write, payload}, state) do
    Worker.send_frame(state.entry, payload)
    {:noreply, state}
  end

  # A caller of another node asks for its request to be written here.
  def handle_info({:forward, reply_to, caller, request, session}, state) do
    state = watch(state, caller)

    case Worker.forward(state.entry, reply_to, caller, request, session) do
      :ok -> :ok
      {:error, reason} -> send(reply_to, {reply_to, {:error, reason}})
    end

    {:noreply, state}
  end

  # A caller of another node timed out: its request is cancelled (or forgotten).
  def handle_info({:cancel_forwarded, reply_to, job}, state) do
    Worker.cancel_forwarded(state.entry, {:alias, reply_to, job})
    {:noreply, state}
  end

  # A caller of another node died, or its node went down or was disconnected.
  def handle_info({:DOWN, mref, :process, caller, _reason}, %{watched: watched} = state)
      when is_map_key(watched, mref) do
    Worker.cancel_forwarded(state.entry, {:caller, caller})

    {:noreply,
     %{state | watched: Map.delete(watched, mref), callers: Map.delete(state.callers, caller)}}
  end

  # Callers with no request in flight any more are no longer watched.
  def handle_info(:prune, state) do
    Process.send_after(self(), :prune, @prune)
    here = node()

    busy =
      try do
        :ets.select(state.entry.pending, [
          {{:_, :_, :"$1"}, [{:"=/=", {:node, :"$1"}, {:const, here}}], [:"$1"]}
        ])
        |> MapSet.new()
      rescue
        ArgumentError -> MapSet.new()
      end

    {idle, callers} =
      Enum.split_with(state.callers, fn {pid, _} -> not MapSet.member?(busy, pid) end)

    Enum.each(idle, fn {_pid, mref} -> Process.demonitor(mref, [:flush]) end)
    watched = Map.drop(state.watched, Enum.map(idle, &elem(&1, 1)))
    {:noreply, %{state | callers: Map.new(callers), watched: watched}}
  end

  # The worker stopped before it answered (Worker.notify_pending/2; the link ends this
  # process right after).
  def handle_info({mref, {:error, reason}}, %{pending: pending} = state)
      when is_map_key(pending, mref) do
    Process.demonitor(mref, [:flush])
    {tag, pending} = Map.pop(pending, mref)
    send(tag, {tag, {:error, Client.transport_error(reason, nil, nil)}})
    {:noreply, %{state | pending: pending}}
  end

  # The worker's reply to one of them: decode it for the store.
  def handle_info({mref, frame}, %{pending: pending} = state) when is_map_key(pending, mref) do
    Process.demonitor(mref, [:flush])
    {tag, pending} = Map.pop(pending, mref)
    entry = state.entry
    send(tag, {tag, Protocol.decode_reply(frame, entry.instance, entry.index)})
    {:noreply, %{state | pending: pending}}
  end

  # The worker stopped before it answered (the link ends this process right after).
  def handle_info({:DOWN, mref, :process, _pid, reason}, %{pending: pending} = state)
      when is_map_key(pending, mref) do
    {tag, pending} = Map.pop(pending, mref)
    send(tag, {tag, {:error, Client.transport_error({:down, reason}, nil, nil)}})
    {:noreply, %{state | pending: pending}}
  end

  def handle_info(msg, state) do
    Logger.debug("Snakeport courier: unexpected message #{inspect(msg, limit: 10)}")
    {:noreply, state}
  end

  defp watch(%{callers: callers} = state, caller) when is_map_key(callers, caller), do: state

  defp watch(state, caller) do
    mref = Process.monitor(caller)

    %{
      state
      | callers: Map.put(state.callers, caller, mref),
        watched: Map.put(state.watched, mref, caller)
    }
  end
end
