defmodule Snakeport.Worker do
  @moduledoc false
  # Owns one Port running `python -m snakeport`.
  #
  # The call path has no hop through this process on the way out: the caller registers
  # `{request_id, alias}` in this worker's public `pending` ETS table, encodes the request
  # itself and writes it with `Port.command/2` (any process may command a port). The port
  # delivers the worker's frames to this process (the port owner), which reads the request
  # id from the frame's first bytes, takes the entry from `pending` and sends the raw frame
  # to the caller's alias; the caller decodes it in its own process.
  #
  # The alias is the caller's monitor of this process (`{:alias, :demonitor}`, as in
  # gen_server calls): when this process stops, every caller in flight gets its `:DOWN` at
  # once, and a caller that timed out deactivates the alias, so that a late reply can never
  # reach its mailbox.

  use GenServer
  require Logger

  alias Snakeport.{Error, Options, Pool, Protocol, Telemetry}

  @type entry :: %{
          index: non_neg_integer(),
          pid: pid(),
          port: port(),
          pending: :ets.tid(),
          counter: :atomics.atomics_ref(),
          os_pid: non_neg_integer() | nil,
          max_frame_bytes: pos_integer()
        }

  # How long an orderly stop waits for the Python process to exit after `shutdown`.
  @shutdown_wait 2_000

  @type handle :: {reference(), non_neg_integer(), entry()}

  ## Caller side ---------------------------------------------------------------------------

  @doc false
  # Sends one request and registers the caller for its reply. `build` gets the request id
  # and returns the encoded request (iodata).
  @spec send_request(entry(), (non_neg_integer() -> iodata())) ::
          {:ok, handle()} | {:error, term()}
  def send_request(%{} = entry, build) do
    id = next_id(entry)
    payload = build.(id)
    size = IO.iodata_length(payload)

    if size > entry.max_frame_bytes do
      {:error, {:frame_too_large, size, entry.max_frame_bytes}}
    else
      mref = :erlang.monitor(:process, entry.pid, [{:alias, :demonitor}])

      try do
        # Register before writing: the reply cannot overtake its registration.
        :ets.insert(entry.pending, {id, mref})
        Port.command(entry.port, payload)
        {:ok, {mref, id, entry}}
      rescue
        # The pending table is gone (its owner died) or the port is closed.
        ArgumentError ->
          Process.demonitor(mref, [:flush])
          forget(entry, id)
          {:error, if(Process.alive?(entry.pid), do: :port_closed, else: :noproc)}
      end
    end
  end

  @doc false
  # Waits for the reply frame of a request sent with send_request/2.
  @spec await(handle(), timeout()) :: {:ok, binary()} | {:error, term()}
  def await({mref, id, entry}, timeout) do
    receive do
      {^mref, frame} ->
        Process.demonitor(mref, [:flush])
        {:ok, frame}

      {:DOWN, ^mref, _, _, reason} ->
        {:error, {:down, reason}}
    after
      timeout ->
        forget(entry, id)
        # Deactivates the alias: from now on a late reply is dropped by the VM.
        Process.demonitor(mref, [:flush])

        receive do
          {^mref, frame} -> {:ok, frame}
        after
          0 ->
            cancel(entry, id)
            {:error, :timeout}
        end
    end
  end

  @doc false
  @spec request(entry(), (non_neg_integer() -> iodata()), timeout()) ::
          {:ok, binary()} | {:error, term()}
  def request(entry, build, timeout) do
    case send_request(entry, build) do
      {:ok, handle} -> await(handle, timeout)
      error -> error
    end
  end

  @doc false
  # Sends a request whose reply nobody waits for (the worker drops it as unregistered).
  @spec cast(entry(), (non_neg_integer() -> iodata())) :: :ok
  def cast(entry, build) do
    Port.command(entry.port, build.(next_id(entry)))
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Asks the worker to interrupt request `target`; its reply (and the target's) is dropped.
  @spec cancel(entry(), non_neg_integer()) :: :ok
  def cancel(entry, target) do
    cast(entry, &Protocol.encode({:cancel, &1, target}))
  end

  defp next_id(%{counter: counter}), do: :atomics.add_get(counter, 1, 1)

  defp forget(entry, id) do
    :ets.delete(entry.pending, id)
  rescue
    ArgumentError -> true
  end

  ## Server side ---------------------------------------------------------------------------

  @doc false
  def child_spec({index, config}) do
    %{
      id: {__MODULE__, index},
      start: {__MODULE__, :start_link, [{index, config}]},
      restart: :permanent,
      shutdown: 5_000
    }
  end

  @doc false
  def start_link({index, config}), do: GenServer.start_link(__MODULE__, {index, config})

  @impl true
  def init({index, config}) do
    Process.flag(:trap_exit, true)

    pending = :ets.new(:snakeport_pending, [:set, :public, write_concurrency: true])
    counter = :atomics.new(1, signed: false)

    with {:ok, port} <- open_port(config),
         {:ok, info} <- await_ready(port, config) do
      entry = %{
        index: index,
        pid: self(),
        port: port,
        pending: pending,
        counter: counter,
        os_pid: info_os_pid(port, info),
        max_frame_bytes: positive(Map.get(info, :max_frame_bytes), 256 * 1024 * 1024)
      }

      :ok = Pool.register(entry, info)

      Telemetry.execute([:snakeport, :worker, :started], %{system_time: System.system_time()}, %{
        worker: index,
        os_pid: entry.os_pid,
        python: Map.get(info, :python),
        snakeport: Map.get(info, :snakeport)
      })

      {:ok, %{index: index, port: port, entry: entry, info: info, exit_status: nil}}
    else
      {:error, %Error{} = error} ->
        Logger.error("Snakeport worker #{index}: " <> error.message)
        {:stop, {:shutdown, error}}
    end
  end

  defp open_port(config) do
    port =
      Port.open({:spawn_executable, config.python}, [
        {:packet, 4},
        :binary,
        :exit_status,
        :use_stdio,
        :hide,
        {:args, ["-m", "snakeport" | Options.worker_flags(config)]},
        {:env, Options.port_env(config)}
      ])

    {:ok, port}
  rescue
    e in ErlangError ->
      {:error,
       Error.new(
         :worker_start_failed,
         "cannot start the Python worker #{config.python}: #{inspect(e.original)}. " <>
           "Set :python (or SNAKEPORT_PYTHON) to an interpreter where snakeport is installed.",
         %{python: config.python}
       )}
  end

  defp await_ready(port, config) do
    receive do
      {^port, {:data, frame}} ->
        case Protocol.safe_decode(frame) do
          {:ok, {:snakeport_ready, version, info}} when is_map(info) ->
            if version == Protocol.version() do
              {:ok, info}
            else
              close(port)
              {:error, Options.version_mismatch(config.python, version)}
            end

          other ->
            close(port)

            what =
              case other do
                :error -> "names atoms this harness does not know, or is not valid ETF"
                {:ok, term} -> "is #{inspect(term, limit: 10)}"
              end

            {:error,
             Error.new(
               :worker_start_failed,
               "protocol error: the first frame of `#{config.python} -m snakeport` should be " <>
                 "{snakeport_ready, Version, Info} but #{what}. " <>
                 "Install a worker matching this harness (#{Options.install_hint(config.python)})."
             )}
        end

      {^port, {:exit_status, status}} ->
        {:error,
         Error.new(
           :worker_start_failed,
           "`#{config.python} -m snakeport` exited with status #{status} before its ready " <>
             "frame (its stderr is above). Check that the worker is installed in that " <>
             "interpreter: #{Options.install_hint(config.python)}.",
           %{exit_status: status}
         )}
    after
      config.startup_timeout ->
        close(port)

        {:error,
         Error.new(
           :worker_start_failed,
           "`#{config.python} -m snakeport` sent no ready frame within " <>
             "#{config.startup_timeout} ms (option :startup_timeout). Check that it starts: " <>
             "run `#{config.python} -m snakeport < /dev/null` by hand.",
           %{startup_timeout: config.startup_timeout}
         )}
    end
  end

  defp info_os_pid(port, info) do
    case Map.get(info, :pid) do
      pid when is_integer(pid) -> pid
      _ -> port |> Port.info(:os_pid) |> elem(1)
    end
  end

  defp positive(n, _default) when is_integer(n) and n > 0, do: n
  defp positive(_, default), do: default

  @impl true
  # A frame from Python: a reply goes straight to the process that sent the request, an
  # event becomes telemetry.
  def handle_info({port, {:data, frame}}, %{port: port} = state) do
    case Protocol.frame_kind(frame) do
      {:reply, id} -> route(state, id, frame)
      :event -> event(state, frame)
      :unknown -> fallback(state, frame)
    end

    {:noreply, state}
  end

  # The Python process exited (killed, crashed, or shut down): stop, so that the supervisor
  # starts a new one; callers in flight see our :DOWN at once.
  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    Logger.error(
      "Snakeport worker #{state.index} (OS pid #{state.entry.os_pid}) exited with status " <>
        "#{status}; its sessions are lost, a new worker is being started"
    )

    {:stop, {:shutdown, {:python_exited, status}}, %{state | exit_status: status}}
  end

  # The port closed without an exit status (port driver failure): same as an exit.
  def handle_info({:EXIT, port, reason}, %{port: port} = state) do
    Logger.error("Snakeport worker #{state.index}: port closed (#{inspect(reason)})")
    {:stop, {:shutdown, {:port_closed, reason}}, %{state | exit_status: :port_closed}}
  end

  def handle_info(msg, state) do
    Logger.debug("Snakeport worker #{state.index}: unexpected message #{inspect(msg, limit: 10)}")
    {:noreply, state}
  end

  @impl true
  def terminate(reason, state) do
    Pool.unregister(state.entry)

    # An orderly stop (supervisor shutdown): ask the worker to shut down and give it a
    # moment to exit by itself. In every case closing the port closes the worker's stdin,
    # which ends it (and its watchdog ends it if the VM itself is gone).
    if state.exit_status == nil and orderly?(reason) do
      cast(state.entry, &Protocol.encode({:shutdown, &1}))

      receive do
        {port, {:exit_status, _}} when port == state.port -> :ok
      after
        @shutdown_wait -> :ok
      end
    end

    close(state.port)

    Telemetry.execute([:snakeport, :worker, :exited], %{system_time: System.system_time()}, %{
      worker: state.index,
      os_pid: state.entry.os_pid,
      reason: reason
    })

    :ok
  end

  defp orderly?(reason), do: reason in [:normal, :shutdown] or match?({:shutdown, _}, reason)

  defp close(port) do
    Port.close(port)
  rescue
    ArgumentError -> true
  end

  defp route(state, id, frame) do
    case :ets.take(state.entry.pending, id) do
      [{^id, reply_to}] -> :erlang.send(reply_to, {reply_to, frame})
      # The caller timed out (and cancelled), or nobody waits for this reply (cast/2).
      [] -> :ok
    end
  end

  defp event(state, frame) do
    case Protocol.safe_decode(frame) do
      {:ok, {:event, name, measurements, metadata}}
      when is_atom(name) and is_map(measurements) and is_map(metadata) ->
        meta = Map.merge(metadata, %{worker: state.index, os_pid: state.entry.os_pid})
        Telemetry.execute([:snakeport, :worker, name], measurements, meta)

        if name == :protocol_error do
          Logger.warning("Snakeport worker #{state.index} protocol error: #{inspect(metadata)}")
        end

      {:ok, other} ->
        protocol_error(state, :malformed_event, "malformed event: #{inspect(other, limit: 10)}")

      :error ->
        protocol_error(
          state,
          :unsafe_term,
          "an event could not be decoded safely (unknown atom?)"
        )
    end
  end

  # A frame whose first bytes are not a recognised reply/event header: decode it whole.
  defp fallback(state, frame) do
    case Protocol.safe_decode(frame) do
      {:ok, {:reply, id, _, _}} when is_integer(id) ->
        route(state, id, frame)

      {:ok, {:event, _, _, _}} ->
        event(state, frame)

      {:ok, other} ->
        protocol_error(state, :unexpected_frame, "unexpected frame: #{inspect(other, limit: 10)}")

      :error ->
        protocol_error(state, :unsafe_term, "a frame could not be decoded safely")
    end
  end

  defp protocol_error(state, reason, message) do
    Logger.warning("Snakeport worker #{state.index}: #{message}")

    Telemetry.execute([:snakeport, :worker, :protocol_error], %{}, %{
      reason: reason,
      message: message,
      worker: state.index,
      os_pid: state.entry.os_pid,
      source: :harness
    })
  end
end
