defmodule MixSample do
  @moduledoc """
  A small app that calls Python through Snakeport, the way a user's app would.

  `run/0` walks through four things and prints what happens:

    1. **Auto-session** - plain calls from a process that never opened a session.
    2. **Shared session** - SnakeBridge's `SessionContext` example: process A loads a
       model into session `"shared-<unique>"` and sends the ref to process B, which adopts
       the same session and calls `predict` with it.
    3. **Releasing** - `release_ref/1` and `release_session/1`, and the error a later use
       of a released ref returns.
    4. **Owner death** - when A and then B exit, the harness releases the session in
       Python: `session_info/1` and the worker's ref count go back to zero.

  Run it with `mix run demo.exs` (see README.md).
  """

  alias Snakeport.SessionContext

  @xs [0.0, 1.0, 2.5]

  @doc "Runs the whole demo, printing each step. Raises if a step does not behave."
  def run do
    heading("Snakeport mix sample")
    worker_line()

    model = auto_session()
    shared = shared_session()
    releasing(model)
    owner_death(shared)

    heading("Done")
    :ok
  end

  # ---------------------------------------------------------------------------------
  # 1. Auto-session
  # ---------------------------------------------------------------------------------

  defp auto_session do
    heading("1. Auto-session: calls from a process without a session context")

    show("math.sqrt(2)", Snakeport.call!("math", "sqrt", [2]))
    show("statistics.mean([1, 2, 3, 4])", Snakeport.call!("statistics", "mean", [[1, 2, 3, 4]]))

    show(
      "builtins.sorted([3, 1, 2], reverse: true)",
      Snakeport.call!("builtins", "sorted", [[3, 1, 2]], kwargs: %{reverse: true})
    )

    model = Snakeport.call!("sample_model", "load", [])
    show("sample_model.load()", model)
    line("  -> an object that cannot travel as data comes back as a ref in this")
    line("     process's auto-session #{inspect(model.session_id)}")
    show("model.predict(#{inspect(@xs)})", Snakeport.method!(model, "predict", [@xs]))
    show("model.describe()", Snakeport.method!(model, "describe", []))
    show("model.slope (get_attr)", Snakeport.get_attr!(model, "slope"))
    model
  end

  # ---------------------------------------------------------------------------------
  # 2. Shared session across two processes (the seed's example)
  # ---------------------------------------------------------------------------------

  defp shared_session do
    heading("2. Shared session: process A loads, process B predicts")

    session_id = "shared-#{System.unique_integer([:positive])}"
    line("session id: #{session_id}")
    parent = self()

    # Process B waits for the ref, adopts the session, predicts, then stays alive as an
    # owner until told to stop.
    b =
      spawn(fn ->
        receive do
          {:model, session_id, ref} ->
            result =
              SessionContext.with_session([session_id: session_id], fn ->
                Snakeport.method(ref, "predict", [@xs])
              end)

            send(parent, {:b_predicted, self(), result})
            hold_until_stopped()
        end
      end)

    # Process A loads the model into the shared session and sends the ref to B; it too
    # stays alive as an owner (if every owner died before B adopted the session, the
    # session - and the model - would be released).
    a =
      spawn(fn ->
        ref =
          SessionContext.with_session([session_id: session_id], fn ->
            {:ok, ref} = Snakeport.call("sample_model", "load", [])
            send(b, {:model, session_id, ref})
            ref
          end)

        send(parent, {:a_loaded, self(), ref})
        hold_until_stopped()
      end)

    ref = receive_or_raise({:a_loaded, a}, "process A never loaded the model")
    line("process A #{inspect(a)} loaded #{inspect(ref)} and sent it to B")

    {:ok, prediction} = receive_or_raise({:b_predicted, b}, "process B never predicted")
    line("process B #{inspect(b)} adopted #{session_id}:")
    show("  model.predict(#{inspect(@xs)})", prediction)

    show("session_info refs", session_refs(session_id))
    show("sample_model.load_count()", Snakeport.call!("sample_model", "load_count", []))
    line("  -> the expensive fit ran once; the module-level cache lives as long as the worker")

    %{session_id: session_id, a: a, b: b, ref: ref}
  end

  # ---------------------------------------------------------------------------------
  # 3. Releasing
  # ---------------------------------------------------------------------------------

  defp releasing(model) do
    heading("3. Releasing refs and sessions")

    show("release_ref(model)", Snakeport.release_ref(model))
    show("model.predict after release_ref", Snakeport.method(model, "predict", [@xs]) |> brief())
    show("release_ref(model) again (idempotent)", Snakeport.release_ref(model))

    {session_id, m1, m2} =
      SessionContext.with_session(fn ->
        m1 = Snakeport.call!("sample_model", "load", [])
        m2 = Snakeport.call!("sample_model", "load", [])
        {m1.session_id, m1, m2}
      end)

    line("with_session/1 (generated id #{inspect(session_id)}) loaded two models")
    show("session_info refs", session_refs(session_id))
    show("release_session(#{inspect(session_id)})", Snakeport.release_session(session_id))
    show("session_info after release_session", session_refs(session_id))
    show("m1.predict after release_session", Snakeport.method(m1, "predict", [@xs]) |> brief())
    show("m2.describe after release_session", Snakeport.method(m2, "describe", []) |> brief())
  end

  # ---------------------------------------------------------------------------------
  # 4. Owner death
  # ---------------------------------------------------------------------------------

  defp owner_death(%{session_id: session_id, a: a, b: b}) do
    heading("4. Owner death releases the session in Python")

    show("session_info refs (A and B alive)", session_refs(session_id))

    stop_and_wait(a)
    line("process A exited (monitor :DOWN received)")
    show("session_info refs (B still owns it)", session_refs(session_id))

    stop_and_wait(b)
    line("process B exited (monitor :DOWN received)")

    {:ok, info, ms} = wait_released(session_id)
    show("session_info after the last owner died (#{ms} ms)", info)

    # An auto-session: a Task that loads a model and exits.
    task = Task.async(fn -> Snakeport.call!("sample_model", "load", []) end)
    task_ref = Task.await(task)
    line("a Task loaded #{inspect(task_ref)} in its auto-session, then exited")
    {:ok, info, ms} = wait_released(task_ref.session_id)
    show("session_info of the Task's auto-session (#{ms} ms)", info)

    {:ok, total, _ms} = MixSample.Wait.until(fn -> zero(total_refs()) end)
    show("worker stats: refs held in Python", total)
    show("sample_model.live_models()", Snakeport.call!("sample_model", "live_models", []))
  end

  # ---------------------------------------------------------------------------------
  # Helpers (public ones are used by the tests too)
  # ---------------------------------------------------------------------------------

  @doc """
  Number of refs the worker holds for `session_id`, or `:released` when the session is
  gone (`session_info/1` answers `session_not_found`).
  """
  def session_refs(session_id) do
    case Snakeport.session_info(session_id) do
      {:ok, %{refs: n}} -> n
      {:error, %Snakeport.Error{reason: :session_not_found}} -> :released
      {:error, %Snakeport.Error{} = e} -> {:error, e.reason}
    end
  end

  @doc "Total refs held by the worker(s), from `Snakeport.stats/0`."
  def total_refs do
    case Snakeport.stats() do
      {:ok, %{refs: n}} when is_integer(n) -> n
      {:ok, %{workers: workers}} when is_list(workers) -> sum_refs(workers)
      {:ok, workers} when is_list(workers) -> sum_refs(workers)
      %{refs: n} when is_integer(n) -> n
      other -> raise "unexpected Snakeport.stats() result: #{inspect(other)}"
    end
  end

  defp sum_refs(workers), do: workers |> Enum.map(&Map.fetch!(&1, :refs)) |> Enum.sum()

  @doc """
  Polls (bounded) until `session_id` is released in the worker or holds no refs.
  Returns `{:ok, :released | 0, elapsed_ms}` or `{:timeout, last}`.
  """
  def wait_released(session_id, timeout_ms \\ 5_000) do
    MixSample.Wait.until(
      fn ->
        case session_refs(session_id) do
          :released -> {:ok, :released}
          0 -> {:ok, 0}
          other -> other
        end
      end,
      timeout_ms
    )
  end

  @doc "Stops a demo/test owner process and waits for its `:DOWN`."
  def stop_and_wait(pid, timeout_ms \\ 5_000) do
    mref = Process.monitor(pid)
    send(pid, :stop)

    receive do
      {:DOWN, ^mref, :process, ^pid, _} -> :ok
    after
      timeout_ms -> raise "process #{inspect(pid)} did not stop"
    end
  end

  @doc false
  def hold_until_stopped do
    receive do
      :stop -> :ok
    end
  end

  defp zero(0), do: {:ok, 0}
  defp zero(n), do: n

  defp receive_or_raise({tag, pid}, message) do
    receive do
      {^tag, ^pid, value} -> value
    after
      10_000 -> raise message
    end
  end

  defp brief({:error, %Snakeport.Error{reason: reason, message: message}}),
    do: {:error, reason, message}

  defp brief(other), do: other

  defp worker_line do
    case Snakeport.stats() do
      {:ok, stats} -> line("worker stats: #{inspect(stats)}")
      other -> line("worker stats: #{inspect(other)}")
    end
  end

  defp heading(text) do
    IO.puts("")
    IO.puts(IO.ANSI.format([:bright, "== ", text, " =="]))
  end

  defp line(text), do: IO.puts(text)

  defp show(label, value) do
    IO.puts(String.pad_trailing(label, 44) <> " => " <> inspect(value, pretty: false, limit: 20))
  end
end
