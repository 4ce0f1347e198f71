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
  # `{request_id, tag, caller}` in this worker's public `pending` ETS table, encodes the
  # request itself and writes it with `Port.command/2` (any process may command a port).
  # The port delivers the worker's frames to this process (the port owner), which reads the
  # request id from the frame's first bytes, takes the row from `pending` and sends
  # `{tag, frame}` to the caller; the caller decodes it in its own process.
  #
  # Reply tags: request/4's tag is a plain reference (`make_ref/0`), with neither a monitor
  # of this process nor an alias: a monitor and its demonitor were two signals per call for
  # this process (the busiest of the call path) to handle, and a message to an alias is a
  # signal the caller handles apart (its alias looked up, deactivated, freed), which cost
  # ~1 µs of BEAM CPU per call with 64 callers. Whoever takes a row from `pending` sends
  # its one message: this process the reply (route/3), or, as it stops, a
  # `{tag, {:error, {:down, reason}}}` in place of a `:DOWN` to every local caller in
  # flight (terminate/2: notify_pending/2, after closing the port, so that no request is
  # written after it); a process killed runs no terminate/2, so `pending` has the Pool as
  # its heir, which sends the same with reason `:killed`. A caller that stops waiting (it
  # timed out, or its request could not be written) first claims its row (marks it
  # cancelled, or takes it): then nobody sends to it, and a late reply is dropped here.
  # When the row is gone already its message is on its way, and the caller receives it
  # (await_taken/3), so that no late message is ever left in its mailbox. (send_request/4
  # keeps a monitor of this process as its tag, and takes either message.) request/4
  # creates the tag and receives the reply in one function, as gen_server calls do, so
  # that the compiler's receive optimisation applies: the wait skips every message that
  # was in the caller's mailbox before, however many. A reply that finds no entry in
  # `pending` (the late reply of a call that timed out, the replies to `cancel` and
  # `shutdown`) is not lost silently: it becomes a [:snakeport, :worker, :reply_dropped]
  # event.
  #
  # Liveness (no per-call message, monitor or table write is added to the call path for it):
  #
  # * A call whose caller times out is cancelled: the caller marks its `pending` row
  #   `{:cancelled, at}` and tells this process, which takes the row (unless the reply took
  #   it first), writes `cancel` (without ever blocking on a busy port: retried on the next
  #   check) and remembers the request in `cancels`. A request that is not a job (stats,
  #   session_info, ...: nothing to cancel) is just forgotten.
  # * Every Defaults.liveness_interval/0 ms this process looks at `pending`: a row whose
  #   caller died is taken and its request cancelled the same way (the caller pid is in the
  #   row for that, and for Snakeport.Tools).
  # * A cancelled request whose reply has not come :cancel_grace ms after its cancel (code
  #   that ignores the cancel: C code such as time.sleep, or code holding the GIL, which
  #   blocks the worker's reader) marks the worker stuck (Snakeport.Pool.set_stuck/3: no new
  #   session goes there; [:snakeport, :worker, :stuck]); its reply arriving clears it. A
  #   worker stuck for :stuck_timeout ms is killed with SIGKILL and stops with
  #   `{:shutdown, {:stuck_killed, status}}`: its callers get :worker_exited at once, its
  #   sessions are lost, its supervisor starts a new one.
  # * A caller never waits for a busy port (a worker whose reader does not run): its request
  #   goes to the courier, which waits for the port, and the caller waits for the reply with
  #   its own deadline (write/5).
  # * Stopping kills the Python process when it does not exit by itself: after `shutdown`
  #   and Defaults.shutdown_wait/0 ms on an orderly stop, at once otherwise (terminate/2).
  #   With the kernel's parent-death signal (the worker's `die_with_parent`) nothing
  #   outlives the VM either.
  #
  # Restarts are paced by Snakeport.Pool.restart_delay/3: a worker process that starts
  # again after a quick exit waits (backoff) in handle_continue/2 before it starts Python,
  # so that a worker that keeps dying never exhausts its supervisor's restart intensity.
  #
  # Each ready worker links one Snakeport.Courier, which writes the session store's
  # requests to this port, so that the store itself never writes to a port.
  #
  # Other nodes (Snakeport.Cluster): a process of another node whose session lives here
  # cannot write to this port (Port.command/2 is local), nor read `pending` or the id
  # counter. Its request/4 monitors this process with an alias (its node may go away: only
  # a monitor tells it), and
  # sends `{:forward, alias, caller, request, session}` to this worker's courier, which
  # writes it with forward/5: the `pending` row holds the remote alias and caller, so the
  # reply goes from here straight to the caller (never suspending this process on a busy
  # distribution channel: send_remote/2), tools get the caller, and a worker that dies, or
  # a node that goes down or disconnects, reaches the caller as its :DOWN (:noconnection)
  # at once. A remote caller that times out sends `{:cancel_forwarded, alias, job?}` to the
  # courier (it does not know the request id); one that dies, or whose node goes, is seen
  # by the courier's monitor of it (the liveness check here skips remote callers: it
  # cannot ask whether they are alive).
  #
  # The worker's own requests (Python code calling an Elixir tool, `{tool_call, ...}`) are
  # handed to a runner under the instance's Task.Supervisor (Snakeport.Tools), with the pid
  # of the process that waits for the reply of the Python call in question (the third
  # element of its `pending` entry); this process only keeps `call id => runner` so that a
  # `{tool_cancel, CallId}` can stop it.

  use GenServer
  require Logger

  alias Snakeport.{
    Cmd,
    Courier,
    Defaults,
    Error,
    Options,
    Pool,
    Protocol,
    PythonLogs,
    Telemetry,
    Tools
  }

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

  # A worker of another node, as a route of the session store names it
  # (Snakeport.Cluster.remote_entry/2).
  @type remote :: %{
          remote: node(),
          instance: atom(),
          index: non_neg_integer(),
          pid: pid(),
          courier: pid(),
          os_pid: non_neg_integer() | nil,
          max_frame_bytes: pos_integer()
        }

  @type handle :: {reference(), non_neg_integer() | nil, entry() | remote(), boolean()}

  @shutdown_wait Defaults.shutdown_wait()
  @kill_wait Defaults.kill_wait()
  @interval Defaults.liveness_interval()
  # How long a caller that lost its row to a killed worker's Pool waits for the notice.
  @notice_wait Defaults.kill_wait()

  ## Caller side ---------------------------------------------------------------------------

  @doc false
  # Sends one request (a Snakeport.Protocol builder's result; `session` is its session id,
  # nil for a request that is not about a session) and waits up to `timeout` for its reply
  # frame. The reply's tag (a plain reference here; for a worker of another node a monitor
  # with its alias) is created here, in the function that receives: the receive
  # optimisation then skips the caller's older messages (see above).
  # On timeout a job (call, method, getattr, setattr, eval) is cancelled.
  @spec request(entry() | remote(), Protocol.request(), String.t() | nil, timeout()) ::
          {:ok, binary()} | {:error, term()}
  def request(%{remote: _} = entry, request, session, timeout) do
    # A worker of another node: its courier writes the request there (see *Other nodes*).
    mref = :erlang.monitor(:process, entry.pid, [{:alias, :reply_demonitor}])
    send(entry.courier, {:forward, mref, self(), request, session})

    receive do
      {^mref, frame} when is_binary(frame) -> {:ok, frame}
      {^mref, {:error, reason}} -> {:error, reason}
      {:DOWN, ^mref, _, _, reason} -> {:error, {:down, reason}}
    after
      timeout -> timed_out(entry, nil, mref, job?(request))
    end
  end

  def request(%{} = entry, request, session, timeout) do
    with {:ok, id, payload} <- encode_request(entry, request, session) do
      # A plain reference as the reply's tag (see *Reply tags* above).
      tag = make_ref()

      case write(entry, id, tag, payload) do
        :ok ->
          receive do
            {^tag, frame} when is_binary(frame) -> {:ok, frame}
            {^tag, {:error, reason}} -> {:error, reason}
          after
            timeout -> timed_out(entry, id, tag, nil, job?(request))
          end

        error ->
          error
      end
    end
  end

  @doc false
  # Sends one request and registers the caller for its reply (for requests in flight
  # together: await/2 each handle). The same as request/4 otherwise; with `opts`
  # [:nosuspend] it never waits for a busy port (a worker that does not read its stdin):
  # the request is then not sent ({:error, :busy}).
  @spec send_request(entry() | remote(), Protocol.request(), String.t() | nil, [:nosuspend]) ::
          {:ok, handle()} | {:error, term()}
  def send_request(entry, request, session, opts \\ [])

  def send_request(%{remote: _} = entry, request, session, _opts) do
    mref = :erlang.monitor(:process, entry.pid, [{:alias, :reply_demonitor}])
    send(entry.courier, {:forward, mref, self(), request, session})
    {:ok, {mref, nil, entry, job?(request)}}
  end

  def send_request(%{} = entry, request, session, opts) do
    with {:ok, id, payload} <- encode_request(entry, request, session) do
      mref = Process.monitor(entry.pid)

      case write(entry, id, mref, payload, opts) do
        :ok ->
          {:ok, {mref, id, entry, job?(request)}}

        error ->
          Process.demonitor(mref, [:flush])
          error
      end
    end
  end

  @doc false
  # Waits for the reply frame of a request sent with send_request/3.
  @spec await(handle(), timeout()) :: {:ok, binary()} | {:error, term()}
  def await({mref, nil, %{remote: _} = entry, job}, timeout) do
    receive do
      {^mref, frame} when is_binary(frame) -> {:ok, frame}
      {^mref, {:error, reason}} -> {:error, reason}
      {:DOWN, ^mref, _, _, reason} -> {:error, {:down, reason}}
    after
      timeout -> timed_out(entry, nil, mref, job)
    end
  end

  def await({mref, id, entry, job}, timeout) do
    receive do
      {^mref, frame} when is_binary(frame) ->
        Process.demonitor(mref, [:flush])
        {:ok, frame}

      {^mref, {:error, reason}} ->
        Process.demonitor(mref, [:flush])
        {:error, reason}

      # The worker stopped: if it was killed, its heir the Pool may be telling us too.
      {:DOWN, ^mref, _, _, reason} ->
        if claim(entry, id, false),
          do: {:error, {:down, reason}},
          else: await_notice(entry, mref, {:error, {:down, reason}})
    after
      timeout -> timed_out(entry, id, mref, mref, job)
    end
  end

  # Registers the caller before writing (the reply cannot overtake its registration); the
  # caller's pid is in the row for liveness (a dead caller's request is cancelled) and for
  # the tools its call may ask for (Snakeport.Tools).
  # A caller never waits for a busy port (a worker whose reader does not run: code holding
  # the GIL, a stopped process; or a big frame still being written) beyond its deadline:
  # the request is then handed to the courier, which writes it (blocking) while the caller
  # waits for the reply with its timeout as usual. With `opts` [:nosuspend] a busy port
  # means not sent.
  defp write(entry, id, tag, payload, opts \\ []) do
    :ets.insert(entry.pending, {id, tag, self()})

    cond do
      Port.command(entry.port, payload, [:nosuspend]) ->
        :ok

      opts == [] and is_pid(entry.courier) and entry.courier != self() ->
        send(entry.courier, {:write, payload})
        :ok

      opts == [] ->
        true = Port.command(entry.port, payload)
        :ok

      true ->
        # Busy, and told not to wait: not sent.
        withdraw(entry, id, tag)
        {:error, :busy}
    end
  rescue
    # The pending table is gone (its owner died) or the port is closed.
    ArgumentError ->
      # (A worker that stops meanwhile may have taken the row to tell us: notify_pending/2.)
      withdraw(entry, id, tag)
      {:error, if(Process.alive?(entry.pid), do: :port_closed, else: :noproc)}
  end

  # The row of a request that was not written goes; a message already on its way for it
  # (a stopping worker's down notice) is received and dropped.
  defp withdraw(entry, id, tag) do
    unless claim(entry, id, false), do: await_taken(entry, tag, nil)
    :ok
  end

  defp timed_out(%{remote: _} = entry, nil, mref, job) do
    Process.demonitor(mref, [:flush])

    receive do
      {^mref, frame} when is_binary(frame) -> {:ok, frame}
      {^mref, {:error, reason}} -> {:error, reason}
    after
      0 ->
        # The courier there finds the request by its alias and cancels it.
        send(entry.courier, {:cancel_forwarded, mref, job})
        {:error, :timeout}
    end
  end

  # A local caller stops waiting: it claims its row (a job is cancelled, anything else
  # forgotten), so that a reply that comes later is dropped by the worker process. A row
  # taken already is being answered: that answer is the result (see *Reply tags*).
  # `monitor` is send_request/4's monitor of the worker (nil for request/4).
  defp timed_out(entry, id, tag, monitor, job) do
    if claim(entry, id, job) do
      if monitor, do: Process.demonitor(monitor, [:flush])
      {:error, :timeout}
    else
      await_taken(entry, tag, monitor)
    end
  end

  # Whether the caller got its row before anyone answered it: marked cancelled (a job, whose
  # cancel the worker process then writes) or taken. False when the row is gone: taken by
  # whoever sends its message, or with the table (its owner died). (Also for the rows of a
  # caller of another node that timed out: cancel_forwarded/2.)
  defp claim(entry, id, true = _job), do: mark_cancelled(entry, id)

  defp claim(entry, id, false = _job) do
    :ets.take(entry.pending, id) != []
  rescue
    ArgumentError -> false
  end

  # The message of a row taken by someone else, who sends it right after the take: the
  # worker process (the reply, or its down notice as it stops), or the Pool (the down
  # notice of a killed worker). A monitor of the worker bounds the wait: what the worker
  # sent comes before its :DOWN. Without a message the result is :timeout.
  defp await_taken(entry, tag, monitor) do
    monitor = monitor || Process.monitor(entry.pid)

    receive do
      {^tag, reply} ->
        Process.demonitor(monitor, [:flush])
        taken_result(reply)

      {:DOWN, ^monitor, _, _, _reason} ->
        await_notice(entry, tag, {:error, :timeout})
    end
  end

  # The worker is gone and the caller's row was taken: by the worker before it died (its
  # message, if it sent one, came before its :DOWN) or by the Pool, which sends the down
  # notice of a killed worker right after the take and deletes the table once every notice
  # is sent. So the notice is waited for while the table is there, at most @notice_wait
  # ms; `otherwise` is the result without one.
  defp await_notice(entry, tag, otherwise) do
    wait = if :ets.info(entry.pending, :owner) == :undefined, do: 0, else: @notice_wait

    receive do
      {^tag, reply} -> taken_result(reply)
    after
      wait -> otherwise
    end
  end

  defp taken_result(frame) when is_binary(frame), do: {:ok, frame}
  defp taken_result({:error, reason}), do: {:error, reason}

  @doc false
  # Tells every local caller waiting in `pending` that this worker is gone (`reason`, as a
  # monitor's :DOWN would): run by the worker as it stops (terminate/2), and by the Pool when
  # a killed worker left it the table (its heir). Callers of other nodes are told by their
  # own monitors of the worker.
  @spec notify_pending(:ets.tid(), term()) :: :ok
  def notify_pending(pending, reason) do
    here = node()
    spec = [{{:"$1", :"$2", :"$3"}, [{:is_reference, :"$2"}], [{{:"$1", :"$2", :"$3"}}]}]

    for {id, tag, caller} <- :ets.select(pending, spec),
        node(caller) == here,
        [_] <- [:ets.take(pending, id)] do
      send(caller, {tag, {:error, {:down, reason}}})
    end

    :ok
  rescue
    ArgumentError -> :ok
  end

  @jobs [:call, :method, :getattr, :setattr, :eval]

  defp job?(request), do: elem(request, 0) in @jobs

  @doc false
  # Writes the request of a process of another node (`caller`, waiting on `reply_to`, its
  # alias), on its behalf: run by this worker's courier (Snakeport.Courier). The reply
  # goes from this worker straight to `reply_to`, as for a local caller.
  @spec forward(entry(), reference(), pid(), Protocol.request(), String.t() | nil) ::
          :ok | {:error, term()}
  def forward(entry, reply_to, caller, request, session) do
    with {:ok, id, payload} <- encode_request(entry, request, session) do
      :ets.insert(entry.pending, {id, reply_to, caller})
      Port.command(entry.port, payload)
      :ok
    end
  rescue
    ArgumentError -> {:error, :port_closed}
  end

  @doc false
  # The requests in flight of the alias `reply_to` (a caller of another node that timed
  # out), or of the process `caller` (one that died): cancelled (a job) or forgotten.
  @spec cancel_forwarded(entry(), {:alias, reference(), boolean()} | {:caller, pid()}) :: :ok
  def cancel_forwarded(entry, {:alias, reply_to, job}) do
    for id <- :ets.select(entry.pending, [{{:"$1", reply_to, :_}, [], [:"$1"]}]),
        do: claim(entry, id, job)

    :ok
  rescue
    ArgumentError -> :ok
  end

  def cancel_forwarded(entry, {:caller, caller}) do
    spec = [{{:"$1", :"$2", caller}, [{:is_reference, :"$2"}], [:"$1"]}]
    Enum.each(:ets.select(entry.pending, spec), &cancel(entry, &1))
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Sends a request whose reply nobody waits for (`shutdown`): its reply becomes a
  # :reply_dropped event. Never blocks on a busy port (the request is then not sent).
  @spec cast(entry(), Protocol.request()) :: :ok
  def cast(entry, request) do
    Port.command(entry.port, Protocol.encode(request, next_id(entry), nil), [:nosuspend])
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Writes a frame, waiting for a busy port; nobody here waits for an answer. For a
  # tool_reply, and for the frame of a caller that found the port busy (write/5: run by the
  # courier, the one process that may wait for the port). The latter is written even when
  # its caller timed out meanwhile: the cancel is on its way, and only a written request's
  # reply ends the wait for that cancel (an unwritten one would mark the worker stuck).
  @spec send_frame(entry(), iodata()) :: :ok
  def send_frame(entry, frame) do
    Port.command(entry.port, frame)
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Cancels request `target` (its waiter is gone: it timed out or exited): its pending row
  # is marked, and the worker process writes the `cancel`, drops the reply and watches that
  # it comes (liveness). Nothing happens when the reply came already.
  @spec cancel(entry(), non_neg_integer()) :: :ok
  def cancel(entry, target) do
    mark_cancelled(entry, target)
    :ok
  end

  # Marks the row of request `target` cancelled and tells the worker process; false when
  # there is no such row (answered already, or the table is gone).
  defp mark_cancelled(entry, target) do
    marked =
      :ets.select_replace(entry.pending, [
        {{target, :"$1", :"$2"}, [{:is_reference, :"$1"}],
         [{{target, {{:cancelled, System.monotonic_time(:millisecond)}}, :"$2"}}]}
      ])

    if marked == 1, do: send(entry.pid, {:cancel, target})
    marked == 1
  rescue
    ArgumentError -> false
  end

  defp next_id(%{counter: counter}), do: :atomics.add_get(counter, 1, 1)

  # A request's frame with a new id, unless it is larger than the worker reads.
  defp encode_request(entry, request, session) do
    id = next_id(entry)
    payload = Protocol.encode(request, id, session)
    size = IO.iodata_length(payload)

    if size > entry.max_frame_bytes,
      do: {:error, {:frame_too_large, size, entry.max_frame_bytes}},
      else: {:ok, id, payload}
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

    state = %{
      names: names,
      index: index,
      config: config,
      port: nil,
      pending: new_pending(names),
      entry: nil,
      exit_status: nil,
      # tool call id => {runner pid, monitor ref}; monitor ref => call id
      tools: %{},
      tool_monitors: %{},
      # request id => monotonic ms of its cancel, until its reply comes (liveness)
      cancels: %{},
      # cancels not written yet (the port was busy)
      unsent: [],
      # monotonic ms since this worker is stuck, or nil; when it was killed, or nil
      stuck_since: nil,
      killed_at: nil
    }

    case backoff(names.pool, index, config.max_restart_backoff) do
      0 ->
        case open_port(config) do
          {:ok, port} ->
            {:ok, %{state | port: port}, {:continue, :handshake}}

          {:error, %Error{} = error} ->
            Logger.error("Snakeport worker #{index}: " <> error.message)
            {:stop, {:shutdown, error}}
        end

      delay ->
        {:ok, state, {:continue, {:backoff, delay}}}
    end
  end

  # The table of requests in flight. Its heir is the Pool: a worker killed (no terminate/2)
  # leaves it there, and the Pool tells its callers (notify_pending/2). Without
  # write_concurrency: its two writes per call (the caller's insert, this process's take)
  # then take the table's lock for writing, which cost the BEAM ~4% less CPU per call at 64
  # callers than the read lock and bucket lock of a write_concurrency table (bench/PROFILE.md,
  # *Spliced replies*); one worker's table sees at most a few hundred thousand calls a second.
  defp new_pending(names) do
    heir =
      case Process.whereis(names.pool) do
        nil -> []
        pool -> [{:heir, pool, :snakeport_pending}]
      end

    :ets.new(:snakeport_pending, [:set, :public] ++ heir)
  end

  # How long this (re)start waits before starting Python (Snakeport.Pool paces restarts).
  defp backoff(pool, index, max_backoff) do
    Pool.restart_delay(pool, index, max_backoff)
  catch
    :exit, _ -> 0
  end

  @impl true
  # A restart after a quick exit: wait (still stoppable by our supervisor), then start.
  def handle_continue({:backoff, delay}, state) do
    receive do
      {:EXIT, _parent, reason} -> {:stop, reason, state}
    after
      delay ->
        case open_port(state.config) do
          {:ok, port} ->
            handle_continue(:handshake, %{state | port: port})

          {:error, %Error{} = error} ->
            Logger.error("Snakeport worker #{state.index}: " <> error.message)
            Pool.start_failed(state.names.pool, state.index, error)
            {:stop, {:shutdown, error}, state}
        end
    end
  end

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

        # Pool.register/3 makes the worker available, emits [:snakeport, :worker, :started],
        # then lets the instance's start return (when this is one of its first workers).
        :ok = Pool.register(state.names.pool, entry, info)
        schedule_check()
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

  # The ready frame states the worker's protocol version: a worker that sends one is
  # installed, and a version other than ours fails here. A worker that fails before it
  # (no such package, a package too old or too new for its flags or its frame) is
  # diagnosed then, and only then (Options.diagnose/2), so that no probe of the
  # interpreter runs on the start path.
  defp await_ready(port, config) do
    deadline = System.monotonic_time(:millisecond) + config.startup_timeout

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

            diagnosed(config, deadline, fn ->
              Error.new(
                :worker_start_failed,
                "protocol error: the first frame of `#{config.python} -m snakeport` should " <>
                  "be {snakeport_ready, Version, Info} but #{what}. Install a worker " <>
                  "matching this harness (#{Options.install_hint(config.python)})."
              )
            end)
        end

      {^port, {:exit_status, status}} ->
        if status == Options.preload_failed_status() do
          # The worker ran (so it is installed): a module of :preload failed.
          {:error, exited_before_ready(config, status)}
        else
          diagnosed(config, deadline, fn -> exited_before_ready(config, status) end)
        end

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

  # The diagnosis of the interpreter (Options.diagnose/2: no package, another protocol
  # version) when it finds the cause, else the error `otherwise` makes. The probe gets
  # what is left of :startup_timeout, at least Defaults.diagnose_timeout/0 ms (well within
  # the start gate's margin).
  defp diagnosed(config, deadline, otherwise) do
    timeout = max(deadline - System.monotonic_time(:millisecond), Defaults.diagnose_timeout())

    case Options.diagnose(config, timeout) do
      {:error, %Error{} = error} -> {:error, error}
      :ok -> {:error, otherwise.()}
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
  # starts a new one; callers in flight are told at once (terminate/2).
  def handle_info({port, {:exit_status, status}}, %{port: port, killed_at: nil} = state) do
    Logger.error(
      "Snakeport worker #{state.index} (OS pid #{state.entry.os_pid}) exited with status " <>
        "#{status}; its sessions are lost, a new worker is being started"
    )

    {:stop, {:shutdown, {:python_exited, status}}, %{state | exit_status: status}}
  end

  # The Python process we killed because it was stuck is gone: stop (restart, sessions lost).
  def handle_info({port, {:exit_status, status}}, %{port: port} = state) do
    {:stop, {:shutdown, {:stuck_killed, status}}, %{state | exit_status: status}}
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

  # A caller timed out on a job: cancel it, unless its reply came meanwhile.
  def handle_info({:cancel, id}, state) do
    case :ets.take(state.pending, id) do
      [{^id, {:cancelled, _}, _caller}] -> {:noreply, cancel_request(state, id)}
      # The reply came first (and was dropped); or the row is not ours to cancel.
      _ -> {:noreply, state}
    end
  end

  # The periodic liveness check (see the module comment).
  def handle_info(:check, state) do
    schedule_check()
    now = System.monotonic_time(:millisecond)
    state = state |> reap_dead_callers() |> write_unsent() |> check_stuck(now)

    if state.killed_at != nil and now - state.killed_at >= @kill_wait do
      # Killed, and no exit status since: stop anyway (terminate/2 kills it again).
      {:stop, {:shutdown, {:stuck_killed, nil}}, state}
    else
      {:noreply, state}
    end
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
    # The handshake did not complete (or never started): nothing was registered. A Python
    # process that did not say it was ready may be stuck: it is killed.
    _ = reason

    with port when port != nil <- state.port,
         {:os_pid, os_pid} <- Port.info(port) && Port.info(port, :os_pid) do
      if state.exit_status == nil, do: kill_os_process(os_pid)
      close(port)
    end

    :ok
  end

  def terminate(reason, state) do
    Pool.unregister(state.names.pool_table, state.entry)
    end_python(state, reason)
    close(state.port)
    # After the close: a request written from now on fails at Port.command/2.
    notify_pending(state.pending, reason)

    Telemetry.execute([:snakeport, :worker, :exited], %{system_time: System.system_time()}, %{
      instance: state.entry.instance,
      worker: state.index,
      os_pid: state.entry.os_pid,
      reason: reason
    })

    :ok
  end

  # Makes sure that the Python process ends with this process. On an orderly stop
  # (supervisor shutdown) it is asked to shut down and given a moment to exit by itself,
  # the replies it sends meanwhile still routed; a process that did not exit (blocked in C
  # code, holding the GIL: neither the request nor the end of its stdin would reach it) is
  # killed with SIGKILL, and so is the process at once on any other stop. The waits are
  # bounded (shutdown_wait + kill_wait, below the supervisor's shutdown timeout).
  defp end_python(%{exit_status: nil} = state, reason) do
    state =
      if orderly?(reason) do
        cast(state.entry, Protocol.shutdown())
        drain(state, System.monotonic_time(:millisecond) + @shutdown_wait)
      else
        state
      end

    if state.exit_status == nil do
      kill_os_process(state.entry.os_pid)
      drain(state, System.monotonic_time(:millisecond) + @kill_wait)
    end

    :ok
  end

  defp end_python(_state, _reason), do: :ok

  # Routes what the port sends until it reports the exit status or `deadline` passes;
  # returns the state (with the exit status when it came).
  defp drain(%{port: port} = state, deadline) do
    receive do
      {^port, {:data, frame}} ->
        state |> frame(frame) |> drain(deadline)

      {^port, {:exit_status, status}} ->
        %{state | exit_status: status}
    after
      max(deadline - System.monotonic_time(:millisecond), 0) -> state
    end
  end

  # A stuck worker was killed already: nothing to ask it.
  defp orderly?({:shutdown, {:stuck_killed, _}}), do: false
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
      [{^id, {:cancelled, _}, _caller}] ->
        # The caller timed out: its cancel (on its way here) is moot now.
        dropped(state, id, frame)
        state

      # A local caller gets `{tag, frame}`; a caller of another node at its alias.
      [{^id, reply_to, caller}] ->
        if node(caller) == node(),
          do: :erlang.send(caller, {reply_to, frame}),
          else: send_remote(reply_to, {reply_to, frame})

        state

      # A request we cancelled (its reply ends our wait for it), or nobody waits for this
      # reply (cast/2).
      [] ->
        dropped(state, id, frame)
        answered(state, id)
    end
  end

  # A reply to a caller of another node: never suspends this process on a busy
  # distribution channel (its local callers' replies would wait); a process of its own
  # delivers it then.
  defp send_remote(reply_to, message) do
    case :erlang.send(reply_to, message, [:nosuspend]) do
      :ok -> :ok
      :nosuspend -> spawn(fn -> send(reply_to, message) end)
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
            [{_, _tag, pid}] -> pid
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

  ## Liveness ----------------------------------------------------------------------------

  defp schedule_check, do: Process.send_after(self(), :check, @interval)

  # Writes `cancel` for request `id` (whose pending row is gone) and waits for its reply.
  defp cancel_request(state, id) do
    state = %{state | cancels: Map.put(state.cancels, id, System.monotonic_time(:millisecond))}
    if write_cancel(state, id), do: state, else: %{state | unsent: [id | state.unsent]}
  end

  # Never blocks on a busy port (a worker that does not read its stdin): false when the
  # cancel could not be written now.
  defp write_cancel(state, id) do
    frame = Protocol.encode(Protocol.cancel(id), next_id(state.entry), nil)
    Port.command(state.port, frame, [:nosuspend])
  rescue
    ArgumentError -> true
  end

  # The requests of callers that died are cancelled (their rows taken: nobody waits).
  defp reap_dead_callers(state) do
    rows =
      :ets.select(state.pending, [
        {{:"$1", :"$2", :"$3"}, [{:is_reference, :"$2"}], [{{:"$1", :"$3"}}]}
      ])

    Enum.reduce(rows, state, fn {id, caller}, state ->
      # (A caller of another node is watched by the courier, which forwarded its request.)
      with true <- node(caller) == node(),
           false <- Process.alive?(caller),
           [_] <- :ets.take(state.pending, id) do
        cancel_request(state, id)
      else
        _ -> state
      end
    end)
  end

  defp write_unsent(%{unsent: []} = state), do: state

  defp write_unsent(state) do
    unsent =
      state.unsent
      |> Enum.reverse()
      |> Enum.filter(&(Map.has_key?(state.cancels, &1) and not write_cancel(state, &1)))
      |> Enum.reverse()

    %{state | unsent: unsent}
  end

  # A reply to a request we cancelled: it ended.
  defp answered(%{cancels: cancels} = state, id) when is_map_key(cancels, id) do
    %{state | cancels: Map.delete(cancels, id)}
  end

  defp answered(state, _id), do: state

  defp check_stuck(state, now) do
    grace = state.config.cancel_grace
    overdue = for {id, at} <- state.cancels, now - at >= grace, do: {id, at}

    cond do
      state.killed_at != nil ->
        state

      overdue == [] and state.stuck_since == nil ->
        state

      overdue == [] ->
        unstuck(state, now)

      state.stuck_since == nil ->
        stuck(state, now, overdue)

      state.config.stuck_timeout != :infinity and
          now - state.stuck_since >= state.config.stuck_timeout ->
        kill_stuck(state, now, overdue)

      true ->
        state
    end
  end

  defp stuck(state, now, overdue) do
    Pool.set_stuck(state.names.pool_table, state.index, now)
    {oldest_id, oldest_at} = Enum.min_by(overdue, &elem(&1, 1))

    restart =
      case state.config.stuck_timeout do
        :infinity -> "it is not restarted (option :stuck_timeout is :infinity)"
        ms -> "it will be killed and restarted in #{ms} ms (option :stuck_timeout)"
      end

    Logger.warning(
      "Snakeport worker #{state.index} (OS pid #{state.entry.os_pid}) is stuck: request " <>
        "#{oldest_id} was cancelled #{now - oldest_at} ms ago and has not ended (C code that " <>
        "ignores the cancel, or holds the GIL), #{length(overdue)} such request(s); it gets " <>
        "no new sessions and " <>
        restart <>
        " (unless the GIL is held, the worker logged where the request's thread is on its " <>
        "stderr, by request id)"
    )

    Telemetry.execute(
      [:snakeport, :worker, :stuck],
      %{system_time: System.system_time(), overdue: length(overdue)},
      %{
        instance: state.entry.instance,
        worker: state.index,
        os_pid: state.entry.os_pid,
        request_ids: Enum.map(overdue, &elem(&1, 0))
      }
    )

    %{state | stuck_since: now}
  end

  defp unstuck(state, now) do
    Pool.set_stuck(state.names.pool_table, state.index, nil)
    Logger.info("Snakeport worker #{state.index}: the requests it was stuck on have ended")

    Telemetry.execute(
      [:snakeport, :worker, :recovered],
      %{system_time: System.system_time(), stuck_ms: now - state.stuck_since},
      %{instance: state.entry.instance, worker: state.index, os_pid: state.entry.os_pid}
    )

    %{state | stuck_since: nil}
  end

  defp kill_stuck(state, now, overdue) do
    Logger.error(
      "Snakeport worker #{state.index} (OS pid #{state.entry.os_pid}) has been stuck for " <>
        "#{now - state.stuck_since} ms on #{length(overdue)} cancelled request(s): killing " <>
        "it (SIGKILL); its sessions are lost, a new worker is being started"
    )

    kill_os_process(state.entry.os_pid)
    %{state | killed_at: now}
  end

  # Sends SIGKILL to an OS process (through `sh -c kill`: no BIF does it, and the shell's
  # kill is there even where /bin/kill is not), with a deadline. Only ever aimed at our own
  # Python process while its port is open (its exit status not received), so its pid
  # cannot have been reused yet (barring the moment between its exit and our
  # {:exit_status, _} message).
  defp kill_os_process(os_pid) when is_integer(os_pid) do
    Cmd.run("sh", ["-c", ~s(kill -s KILL "$1"), "sh", Integer.to_string(os_pid)],
      timeout: @kill_wait
    )

    :ok
  end

  defp kill_os_process(_), do: :ok

  defp event(state, frame) do
    case Protocol.decode_event(frame) do
      {:ok, name, measurements, metadata} ->
        # Python's output: Logger first, then the event (a handler of the event may rely
        # on the line having been logged).
        if name == :log, do: PythonLogs.log(state.entry, measurements, metadata)

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
