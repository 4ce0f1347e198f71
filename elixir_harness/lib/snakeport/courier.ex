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

  use GenServer
  require Logger

  alias Snakeport.{Client, Protocol, Worker}

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
  def init(entry), do: {:ok, %{entry: entry, pending: %{}}}

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
end
