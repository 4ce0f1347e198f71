defmodule Snakeport.Worker do
  @moduledoc false
  # Owns one Port running `python -m snakeport`.
  #
  # Start: init/1 opens the port (an interpreter that cannot be spawned fails at once) and
  # returns; the handshake (waiting up to :startup_timeout for the ready frame) runs in
  # handle_continue/2, so that the worker supervisor never waits for Python and the workers
  # of a pool start in parallel. The worker becomes visible (registered in Snakeport.Pool,
  # where the session store picks workers for new sessions) only once it is ready. A failed
  # handshake is reported to the Pool, which fails the instance's start when it happens
  # during it, then stops the worker (its supervisor restarts it).
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
  # reach its mailbox. A reply that finds no entry in `pending` (the late reply of a call
  # that timed out, the replies to `cancel` and `shutdown`) is not lost silently: it
  # becomes a [:snakeport, :worker, :reply_dropped] event.
  #
  # Each ready worker links one Snakeport.Courier, which writes the session store's
  # requests to this port, so that the store itself never writes to a port.
  #
  # The worker's own requests (Python code calling an Elixir tool, `{tool_call, ...}`) are
  # handed to a runner under the instance's Task.Supervisor (Snakeport.Tools), with the pid
  # of the process that waits for the reply of the Python call in question (the third
  # element of its `pending` entry); this process only keeps `call id => runner` so that a
  # `{tool_cancel, CallId}` can stop it.

  use GenServer
  require Logger

  alias Snakeport.{Courier, Defaults, Error, Options, Pool, Protocol, Telemetry, Tools}

  @type entry :: %{
          instance: atom(),
          index: non_neg_integer(),
          pid: pid(),
          port: port(),
          pending: :ets.tid(),
          counter: :atomics.atomics_ref(),
          os_pid: non_neg_integer() | nil,
          max_frame_bytes: pos_integer(),
          courier: pid() | nil
        }

  @type handle :: {reference(), non_neg_integer(), entry()}

  @shutdown_wait Defaults.shutdown_wait()

  ## Caller side ---------------------------------------------------------------------------

  @doc false
  # Sends one request (a Snakeport.Protocol builder's result; `session` is its session id,
  # nil for a request that is not about a session) and registers the caller for its reply.
  @spec send_request(entry(), Protocol.request(), String.t() | nil) ::
          {:ok, handle()} | {:error, term()}
  def send_request(%{} = entry, request, session) do
    id = next_id(entry)
    payload = Protocol.encode(request, id, session)
    size = IO.iodata_length(payload)

    if size > entry.max_frame_bytes do
      {:error, {:frame_too_large, size, entry.max_frame_bytes}}
    else
      mref = :erlang.monitor(:process, entry.pid, [{:alias, :demonitor}])

      try do
        # Register before writing: the reply cannot overtake its registration. The caller's
        # pid is there for the tools its call may ask for (Snakeport.Tools).
        :ets.insert(entry.pending, {id, mref, self()})
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
  # Waits for the reply frame of a request sent with send_request/3.
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
  @spec request(entry(), Protocol.request(), String.t() | nil, timeout()) ::
          {:ok, binary()} | {:error, term()}
  def request(entry, request, session, timeout) do
    case send_request(entry, request, session) do
      {:ok, handle} -> await(handle, timeout)
      error -> error
    end
  end

  @doc false
  # Sends a request whose reply nobody waits for (`cancel`, `shutdown`): its reply becomes
  # a :reply_dropped event.
  @spec cast(entry(), Protocol.request()) :: :ok
  def cast(entry, request) do
    Port.command(entry.port, Protocol.encode(request, next_id(entry), nil))
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Writes a frame that is not a request (a tool_reply): nobody waits for an answer.
  @spec send_frame(entry(), iodata()) :: :ok
  def send_frame(entry, frame) do
    Port.command(entry.port, frame)
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Asks the worker to interrupt request `target`; its reply (and the target's) is dropped.
  @spec cancel(entry(), non_neg_integer()) :: :ok
  def cancel(entry, target), do: cast(entry, Protocol.cancel(target))

  defp next_id(%{counter: counter}), do: :atomics.add_get(counter, 1, 1)

  defp forget(entry, id) do
    :ets.delete(entry.pending, id)
  rescue
    ArgumentError -> true
  end

  ## Server side ---------------------------------------------------------------------------

  @doc false
  def child_spec({index, names, config}) do
    %{
      id: {__MODULE__, index},
      start: {__MODULE__, :start_link, [{index, names, config}]},
      restart: :permanent,
      shutdown: Defaults.worker_shutdown()
    }
  end

  @doc false
  def start_link(arg), do: GenServer.start_link(__MODULE__, arg)

  @impl true
  def init({index, names, config}) do
    Process.flag(:trap_exit, true)

    case open_port(config) do
      {:ok, port} ->
        state = %{
          names: names,
          index: index,
          config: config,
          port: port,
          pending: :ets.new(:snakeport_pending, [:set, :public, write_concurrency: true]),
          entry: nil,
          exit_status: nil,
          # tool call id => {runner pid, monitor ref}; monitor ref => call id
          tools: %{},
          tool_monitors: %{}
        }

        {:ok, state, {:continue, :handshake}}

      {:error, %Error{} = error} ->
        Logger.error("Snakeport worker #{index}: " <> error.message)
        {:stop, {:shutdown, error}}
    end
  end

  @impl true
  def handle_continue(:handshake, state) do
    case await_ready(state.port, state.config) do
      {:ok, info} ->
        entry = %{
          instance: state.names.name,
          index: state.index,
          pid: self(),
          port: state.port,
          pending: state.pending,
          counter: :atomics.new(1, signed: false),
          os_pid: info_os_pid(state.port, info),
          max_frame_bytes: positive(Map.get(info, :max_frame_bytes), Defaults.max_frame_bytes()),
          courier: nil
        }

        {:ok, courier} = Courier.start_link(entry)
        entry = %{entry | courier: courier}

        # The event before the registration, which is what lets the instance's start return:
        # the initial workers' events precede it (a handler attached once the instance is
        # up sees only later workers' events).
        Telemetry.execute(
          [:snakeport, :worker, :started],
          %{system_time: System.system_time()},
          %{
            instance: entry.instance,
            worker: entry.index,
            os_pid: entry.os_pid,
            python: Map.get(info, :python),
            snakeport: Map.get(info, :snakeport)
          }
        )

        :ok = Pool.register(state.names.pool, entry, info)
        {:noreply, %{state | entry: entry}}

      {:error, %Error{} = error} ->
        Logger.error("Snakeport worker #{state.index}: " <> error.message)
        Pool.start_failed(state.names.pool, state.index, error)
        {:stop, {:shutdown, error}, state}

      {:exit, reason} ->
        {:stop, reason, state}
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
        case Protocol.decode_ready(frame) do
          {:ok, version, info} ->
            if version == Protocol.version() do
              {:ok, info}
            else
              close(port)
              {:error, Options.version_mismatch(config.python, version)}
            end

          {:error, what} ->
            close(port)

            {:error,
             Error.new(
               :worker_start_failed,
               "protocol error: the first frame of `#{config.python} -m snakeport` should be " <>
                 "{snakeport_ready, Version, Info} but #{what}. " <>
                 "Install a worker matching this harness (#{Options.install_hint(config.python)})."
             )}
        end

      {^port, {:exit_status, status}} ->
        {:error, exited_before_ready(config, status)}

      {:EXIT, ^port, reason} ->
        {:error,
         Error.new(
           :worker_start_failed,
           "the port of `#{config.python} -m snakeport` closed before its ready frame " <>
             "(#{inspect(reason)})",
           %{reason: reason}
         )}

      # Our supervisor stops us (the only other process linked to us yet): do not make it
      # wait for the handshake.
      {:EXIT, _parent, reason} ->
        {:exit, reason}
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

  defp exited_before_ready(config, status) do
    why =
      if status == Options.preload_failed_status() do
        "a module of :preload (#{Enum.join(config.preload, ", ")}) failed to import (its " <>
          "traceback is on stderr, above). Install it in that interpreter (:python_deps and " <>
          "`mix snakeport.setup`) or remove it from :preload."
      else
        "Check that the worker is installed in that interpreter: " <>
          "#{Options.install_hint(config.python)}."
      end

    Error.new(
      :worker_start_failed,
      "`#{config.python} -m snakeport` exited with status #{status} before its ready frame " <>
        "(its stderr is above). " <> why,
      %{exit_status: status}
    )
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
    {:noreply, frame(state, frame)}
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

  # The courier died: the session store can no longer reach this worker; restart both.
  def handle_info({:EXIT, courier, reason}, %{entry: %{courier: courier}} = state) do
    Logger.error("Snakeport worker #{state.index}: its courier exited (#{inspect(reason)})")
    {:stop, {:shutdown, {:courier_exited, reason}}, state}
  end

  # A tool runner ended (it answered, or was killed).
  def handle_info({:DOWN, mref, :process, _pid, _reason}, state)
      when is_map_key(state.tool_monitors, mref) do
    {call_id, monitors} = Map.pop(state.tool_monitors, mref)
    {:noreply, %{state | tools: Map.delete(state.tools, call_id), tool_monitors: monitors}}
  end

  def handle_info(msg, state) do
    Logger.debug("Snakeport worker #{state.index}: unexpected message #{inspect(msg, limit: 10)}")
    {:noreply, state}
  end

  @impl true
  def terminate(reason, %{entry: nil} = state) do
    # The handshake did not complete: nothing was registered.
    _ = reason
    close(state.port)
    :ok
  end

  def terminate(reason, state) do
    Pool.unregister(state.names.pool_table, state.entry)

    # An orderly stop (supervisor shutdown): ask the worker to shut down and give it a
    # moment to exit by itself, still routing the replies it sends meanwhile. In every case
    # closing the port closes the worker's stdin, which ends it (and its watchdog ends it
    # if the VM itself is gone).
    if state.exit_status == nil and orderly?(reason) do
      cast(state.entry, Protocol.shutdown())
      drain(state, System.monotonic_time(:millisecond) + @shutdown_wait)
    end

    close(state.port)

    Telemetry.execute([:snakeport, :worker, :exited], %{system_time: System.system_time()}, %{
      instance: state.entry.instance,
      worker: state.index,
      os_pid: state.entry.os_pid,
      reason: reason
    })

    :ok
  end

  defp drain(%{port: port} = state, deadline) do
    receive do
      {^port, {:data, frame}} ->
        state |> frame(frame) |> drain(deadline)

      {^port, {:exit_status, _}} ->
        :ok
    after
      max(deadline - System.monotonic_time(:millisecond), 0) -> :ok
    end
  end

  defp orderly?(reason), do: reason in [:normal, :shutdown] or match?({:shutdown, _}, reason)

  defp close(port) do
    Port.close(port)
  rescue
    ArgumentError -> true
  end

  # Handles one frame from the worker; returns the new state.
  defp frame(state, frame) do
    case Protocol.frame_kind(frame) do
      {:reply, id} ->
        route(state, id, frame)
        state

      :event ->
        event(state, frame)
        state

      :tool_call ->
        tool_call(state, frame)

      :tool_cancel ->
        tool_cancel(state, frame)

      {:unexpected, reason, message} ->
        protocol_error(state, reason, message)
        state
    end
  end

  defp route(state, id, frame) do
    case :ets.take(state.pending, id) do
      [{^id, reply_to, _caller}] -> :erlang.send(reply_to, {reply_to, frame})
      # The caller timed out (and cancelled), or nobody waits for this reply (cast/2).
      [] -> dropped(state, id, frame)
    end
  end

  defp dropped(state, id, frame) do
    if Telemetry.listening?([:snakeport, :worker]) do
      {outcome, error} =
        case Protocol.reply_outcome(frame) do
          :ok -> {:ok, nil}
          {:error, error} -> {:error, error}
        end

      Telemetry.execute([:snakeport, :worker, :reply_dropped], %{}, %{
        instance: state.entry.instance,
        worker: state.index,
        os_pid: state.entry.os_pid,
        request_id: id,
        outcome: outcome,
        error: error
      })
    end
  end

  # Python code asks for an Elixir tool: a runner does it (Snakeport.Tools).
  defp tool_call(state, frame) do
    entry = state.entry

    case Protocol.decode_tool_call(frame, entry.instance, entry.index) do
      {:ok, call} ->
        caller =
          case :ets.lookup(state.pending, call.request_id) do
            [{_, _alias, pid}] -> pid
            [] -> nil
          end

        case Tools.start(state.names.tool_supervisor, entry, call, caller) do
          {:ok, pid} ->
            mref = Process.monitor(pid)

            %{
              state
              | tools: Map.put(state.tools, call.call_id, {pid, mref}),
                tool_monitors: Map.put(state.tool_monitors, mref, call.call_id)
            }

          {:error, reason} ->
            message = "the tool could not be started (#{inspect(reason, limit: 10)})"
            Tools.answer(entry, call.call_id, {:error, :tool_error, message, %{}})
            state
        end

      {:error, reason, message} ->
        protocol_error(state, reason, message)
        state
    end
  end

  # Python stopped waiting for a tool: stop it.
  defp tool_cancel(state, frame) do
    case Protocol.decode_tool_cancel(frame) do
      {:ok, call_id} ->
        case Map.pop(state.tools, call_id) do
          {{pid, mref}, tools} ->
            Process.demonitor(mref, [:flush])
            Process.exit(pid, :kill)
            %{state | tools: tools, tool_monitors: Map.delete(state.tool_monitors, mref)}

          {nil, _} ->
            state
        end

      {:error, reason, message} ->
        protocol_error(state, reason, message)
        state
    end
  end

  defp event(state, frame) do
    case Protocol.decode_event(frame) do
      {:ok, name, measurements, metadata} ->
        meta =
          Map.merge(metadata, %{
            instance: state.entry.instance,
            worker: state.index,
            os_pid: state.entry.os_pid
          })

        Telemetry.execute([:snakeport, :worker, name], measurements, meta)

        if name == :protocol_error do
          Logger.warning("Snakeport worker #{state.index} protocol error: #{inspect(metadata)}")
        end

      {:error, reason, message} ->
        protocol_error(state, reason, message)
    end
  end

  defp protocol_error(state, reason, message) do
    Logger.warning("Snakeport worker #{state.index}: #{message}")

    Telemetry.execute([:snakeport, :worker, :protocol_error], %{}, %{
      instance: state.entry.instance,
      reason: reason,
      message: message,
      worker: state.index,
      os_pid: state.entry.os_pid,
      source: :harness
    })
  end
end
