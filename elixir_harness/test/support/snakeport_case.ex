defmodule Snakeport.Case do
  @moduledoc """
  Case template of the harness tests: starts a fresh Snakeport instance (real Python
  workers) for every test, under the test supervisor.

  The instance is named after the test module (`@instance` in the module, `:instance` in
  the test context), so that modules run concurrently (`async: true`), each with its own
  instance; the tests of a module run one after the other, each with a new instance.

  Options of the instance come from the `:snakeport` tag (`@moduletag snakeport: [...]` or
  `@tag snakeport: [...]`), merged over `pool_size: 1` and the test interpreter, with
  `test/python` on the worker's `PYTHONPATH`. Tag a test `snakeport: false` to start none.

  The telemetry handler table is global: `capture_events/2` forwards only the events of
  one instance.
  """

  use ExUnit.CaseTemplate

  alias Snakeport.Error

  using do
    quote do
      import Snakeport.Case
      alias Snakeport.{Error, Ref, SessionContext}
      @instance __MODULE__
    end
  end

  setup context do
    case Map.get(context, :snakeport, []) do
      false ->
        :ok

      opts ->
        name = context.module
        start_supervised!({Snakeport, Keyword.merge(base_opts(), [name: name] ++ opts)})
        {:ok, instance: name}
    end
  end

  @doc "The interpreter chosen by test_helper.exs."
  def python, do: Application.fetch_env!(:snakeport_test, :python)

  @doc "Directory of the Python helpers used by the tests."
  def python_dir, do: Path.expand("../python", __DIR__)

  @doc "Options every test instance starts with."
  def base_opts do
    [python: python(), pool_size: 1, python_path: [python_dir()], call_timeout: 10_000]
  end

  @doc """
  Polls `fun` until it returns a truthy value or `timeout` ms pass; returns that value or
  flunks with the last result. For state that changes asynchronously (the session store
  reacting to a :DOWN), after synchronising on the event that causes it.
  """
  def eventually(fun, timeout \\ 5_000, interval \\ 10) do
    deadline = System.monotonic_time(:millisecond) + timeout
    poll(fun, deadline, interval)
  end

  defp poll(fun, deadline, interval) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      result ->
        if System.monotonic_time(:millisecond) > deadline do
          ExUnit.Assertions.flunk(
            "condition not met before the deadline; last result: #{inspect(result)}"
          )
        else
          receive do
          after
            interval -> poll(fun, deadline, interval)
          end
        end
    end
  end

  @doc "Refs held in Python by all workers of `instance`."
  def python_refs(instance) do
    {:ok, %{refs: refs}} = Snakeport.stats(instance: instance)
    refs
  end

  @doc "Sessions known to the harness in `instance`."
  def harness_sessions(instance) do
    {:ok, %{sessions: n}} = Snakeport.stats(instance: instance)
    n
  end

  @doc "True when `session_id` is unknown to the harness of `instance` (released)."
  def released?(session_id, instance) do
    match?(
      {:error, %Error{reason: :session_not_found}},
      Snakeport.session_info(session_id, instance: instance)
    )
  end

  @doc "The running instance's names and configuration (Snakeport.Instance)."
  def inst(instance) do
    {:ok, inst} = Snakeport.Instance.fetch(instance)
    inst
  end

  @doc "The entries of the ready workers of `instance`."
  def workers(instance), do: Snakeport.Pool.entries(inst(instance).pool_table)

  @doc "The session store process of `instance`."
  def store(instance), do: inst(instance).server

  @doc """
  Starts a process that runs `fun`, reports its result, then serves `run_in/2` requests
  until `stop/1`. Returns `{pid, result}`.
  """
  def start_owner(fun) do
    parent = self()

    pid =
      spawn(fn ->
        send(parent, {:ran, self(), fun.()})
        owner_loop()
      end)

    receive do
      {:ran, ^pid, result} -> {pid, result}
    after
      10_000 -> ExUnit.Assertions.flunk("owner process did not report")
    end
  end

  defp owner_loop do
    receive do
      {:run, fun, from} ->
        send(from, {:ran, self(), fun.()})
        owner_loop()

      :stop ->
        :ok
    end
  end

  @doc "Runs `fun` in an owner process started with start_owner/1."
  def run_in(pid, fun) do
    send(pid, {:run, fun, self()})

    receive do
      {:ran, ^pid, result} -> result
    after
      10_000 -> ExUnit.Assertions.flunk("owner process did not answer")
    end
  end

  @doc "Stops an owner process and waits for its :DOWN."
  def stop(pid) do
    mref = Process.monitor(pid)
    send(pid, :stop)

    receive do
      {:DOWN, ^mref, :process, ^pid, _} -> :ok
    after
      5_000 -> ExUnit.Assertions.flunk("process #{inspect(pid)} did not stop")
    end
  end

  @doc """
  Attaches a handler forwarding `events` of `instance` to the calling process as
  `{:event, name, measurements, metadata}`; detached when the test ends.
  """
  def capture_events(events, instance) do
    parent = self()
    id = {:test_handler, make_ref()}

    :ok =
      Snakeport.Telemetry.attach_many(id, events, fn name, m, meta, _ ->
        if meta[:instance] == instance, do: send(parent, {:event, name, m, meta})
      end)

    ExUnit.Callbacks.on_exit(fn -> Snakeport.Telemetry.detach(id) end)
    id
  end
end
