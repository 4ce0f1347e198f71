defmodule MixSample do
  @moduledoc """
  A small app that calls Python through Snakeport, the way a user's app would.

  `run/0` walks through five things and prints what happens:

    1. **Auto-session** - plain calls from a process that never opened a session.
    2. **Shared session** - SnakeBridge's `SessionContext` example: process A loads a
       model into session `"shared-<unique>"` and sends the ref to process B, which adopts
       the same session and calls `predict` with it.
    3. **Releasing** - `release_ref/2` and `release_session/2`, and the error a later use
       of a released ref returns.
    4. **Owner death** - when A and then B exit, the harness releases the session in
       Python: `session_info/2` and the worker's ref count go back to zero.
    5. **A second instance** - `MixSample.Threaded` (started with `threads: 4` beside the
       default instance, see `MixSample.Application`): its own workers and sessions, refs
       that remember it, and four calls that run at once there.
    6. **numpy, pandas and scikit-learn** - the seeds' examples with the real libraries:
       the DataFrame `mean` example (a working object, a ref; its value with
       `result: :value`), and a `LinearRegression` fitted by process A whose predictions
       process B gets as numbers in one call, in a shared session.

  Run it with `mix run demo.exs` (see README.md).
  """

  alias Snakeport.SessionContext

  @xs [0.0, 1.0, 2.5]
  @threaded MixSample.Threaded

  @doc "Runs the whole demo, printing each step. Raises if a step does not behave."
  @spec run() :: :ok
  def run do
    heading("Snakeport mix sample")
    worker_line()

    model = auto_session()
    shared = shared_session()
    releasing(model)
    owner_death(shared)
    second_instance()
    science()

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
    # owner, predicting on request, until told to stop.
    b =
      spawn(fn ->
        receive do
          {:model, session_id, ref} ->
            predict = fn ->
              SessionContext.with_session([session_id: session_id], fn ->
                Snakeport.method(ref, "predict", [@xs])
              end)
            end

            send(parent, {:b_predicted, self(), predict.()})
            serve(predict)
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
    show("session_info owners (A and B)", Snakeport.session_info!(session_id).owners)
    show("sample_model.load_count()", Snakeport.call!("sample_model", "load_count", []))

    line("  -> the fit ran once in this worker: module-level caches live as long as the worker")

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
    show("session_info refs after release_session", session_refs(session_id))
    show("m1.predict after release_session", Snakeport.method(m1, "predict", [@xs]) |> brief())
    show("m2.describe after release_session", Snakeport.method(m2, "describe", []) |> brief())
  end

  # ---------------------------------------------------------------------------------
  # 4. Owner death
  # ---------------------------------------------------------------------------------

  defp owner_death(%{session_id: session_id, a: a, b: b}) do
    heading("4. Owner death releases the session in Python")

    # Observe the harness's release events (the built-in telemetry handler API).
    demo = self()
    handler_id = {__MODULE__, :released, demo}

    :ok =
      Snakeport.Telemetry.attach(
        handler_id,
        [:snakeport, :session, :released],
        fn _event, _measurements, meta, pid -> send(pid, {:session_released, meta}) end,
        demo
      )

    try do
      show("session_info refs (A and B alive)", session_refs(session_id))

      stop_and_wait(a)
      line("process A exited (its monitor's :DOWN received)")
      send(b, {:again, self()})
      {:ok, prediction} = receive_or_raise({:b_predicted, b}, "process B did not predict")
      show("B: model.predict(#{inspect(@xs)}) after A died", prediction)
      show("session_info refs (B still owns it)", session_refs(session_id))

      stop_and_wait(b)
      line("process B exited (its monitor's :DOWN received)")
      show("telemetry [:snakeport, :session, :released]", await_released_event(session_id))
      show("session_info", Snakeport.session_info(session_id) |> brief())
      show_python_refs()

      # An auto-session: a Task that loads a model, returns the ref and exits.
      task_ref = Task.async(fn -> Snakeport.call!("sample_model", "load", []) end) |> Task.await()
      line("a Task loaded #{inspect(task_ref)} in its auto-session, then exited")

      show(
        "  telemetry [:snakeport, :session, :released]",
        await_released_event(task_ref.session_id)
      )

      show_python_refs()
      show("sample_model.live_models()", Snakeport.call!("sample_model", "live_models", []))
    after
      Snakeport.Telemetry.detach(handler_id)
    end
  end

  # ---------------------------------------------------------------------------------
  # 5. A second instance
  # ---------------------------------------------------------------------------------

  defp second_instance do
    heading("5. A second instance: #{inspect(@threaded)}, started with threads: 4")

    for instance <- [Snakeport, @threaded] do
      %{workers: [worker | _]} = Snakeport.stats!(instance: instance)
      show("#{inspect(instance)}: worker threads, OS pid", {worker.threads, worker.os_pid})
    end

    model = Snakeport.call!("sample_model", "load", [], instance: @threaded)
    show("sample_model.load() in #{inspect(@threaded)}", model)
    line("  -> the ref remembers its instance: method/4 needs no :instance")
    show("model.predict(#{inspect(@xs)})", Snakeport.method!(model, "predict", [@xs]))

    show(
      "the ref used with instance: Snakeport",
      Snakeport.method(model, "predict", [@xs], instance: Snakeport) |> brief()
    )

    for instance <- [Snakeport, @threaded] do
      show("4 concurrent time.sleep(0.2) in #{inspect(instance)}, ms", sleeps(instance))
    end

    line("  -> one thread runs them one after the other, four threads at once")
    show("release_session (#{inspect(@threaded)})", release_threaded(model.session_id))
  end

  # ---------------------------------------------------------------------------------
  # 6. numpy, pandas and scikit-learn (the seeds' examples, with the real libraries)
  # ---------------------------------------------------------------------------------

  defp science do
    heading("6. numpy, pandas and scikit-learn: data in one call")

    # The seed's DataFrame example, as written there.
    mean =
      SessionContext.with_session(fn ->
        {:ok, df} = Snakeport.call("pandas", "DataFrame", [[1, 2, 3]])
        {:ok, mean} = Snakeport.method(df, "mean", [])
        mean
      end)

    show("pandas: df.mean()", mean)
    line("  -> numpy is data, pandas is a working object unless you ask for its value:")
    {:ok, series} = dataframe_mean()
    show("  df.mean() with result: :value", series)
    show("  Snakeport.Series.to_list/1", Snakeport.Series.to_list(series))

    %{predictions: predictions, coef: coef, a: a, b: b, session_id: id} = shared_regression()
    line("process A fitted a LinearRegression in #{id}; process B predicted with it:")
    show("  model.predict([[3.0], [4.0]]) (one call)", predictions)
    show("  model.coef_, model.intercept_", coef)
    line("  -> an ndarray comes back as a %Snakeport.Array{} (Nx's notation), a numpy.float64")
    line("     as a float: no ref left in the session, no second round trip (.tolist())")
    show("  session_info refs (the model only)", session_refs(id))
    stop_and_wait(a)
    stop_and_wait(b)

    {:ok, %{bytes: bytes, sum: sum}} = arrow_round_trip()
    line("a DataFrame as one Arrow IPC stream (result: :arrow, what Explorer reads):")
    show("  %Snakeport.Arrow{} bytes, and df['v'].sum() of it sent back", {bytes, sum})
  end

  @doc """
  A pandas `DataFrame` as an Arrow IPC stream (`result: :arrow`: the bytes Explorer's
  `load_ipc_stream!/1` reads), sent back to Python, where it is a `DataFrame` again.

  Returns `{:ok, %{bytes: stream_size, sum: sum_of_column_v}}`.
  """
  @spec arrow_round_trip() :: {:ok, map()} | {:error, Snakeport.Error.t()}
  def arrow_round_trip do
    columns = %{"v" => Enum.to_list(1..100)}

    with {:ok, %Snakeport.Arrow{data: data} = arrow} <-
           Snakeport.call("pandas", "DataFrame", [columns], result: :arrow),
         {:ok, sum} <- Snakeport.eval("int(df['v'].sum())", %{"df" => arrow}) do
      {:ok, %{bytes: byte_size(data), sum: sum}}
    end
  end

  @doc """
  The seed's DataFrame example with its value: `df.mean()` as a `%Snakeport.Series{}`
  (`result: :value`), in a session released when the block ends.
  """
  @spec dataframe_mean() :: {:ok, Snakeport.Series.t()} | {:error, Snakeport.Error.t()}
  def dataframe_mean do
    SessionContext.with_session(fn ->
      {:ok, df} = Snakeport.call("pandas", "DataFrame", [[1, 2, 3]])
      Snakeport.method(df, "mean", [], result: :value)
    end)
  end

  @doc """
  The seed's LinearRegression in a shared session: process A creates and fits
  `sklearn.linear_model.LinearRegression` (y = 2x + 1) in session `"sklearn-<unique>"` and
  sends the ref to process B, which adopts the session and calls `predict` on two rows, an
  array: the predictions come back as numbers in that one call. Both processes stay alive
  (owners) until `stop_and_wait/1`.

  Returns `%{predictions: [float], coef: {[float], float}, a: pid, b: pid, session_id: id}`.
  """
  @spec shared_regression() :: map()
  def shared_regression do
    session_id = "sklearn-#{System.unique_integer([:positive])}"
    parent = self()

    b =
      spawn(fn ->
        receive do
          {:model, ^session_id, model} ->
            result =
              SessionContext.with_session([session_id: session_id], fn ->
                x = Snakeport.Array.from_list([[3.0], [4.0]], {:f, 64})
                {:ok, y} = Snakeport.method(model, "predict", [x])
                {:ok, coef} = Snakeport.get_attr(model, "coef_")
                {:ok, intercept} = Snakeport.get_attr(model, "intercept_")

                {round6(Snakeport.Array.to_list(y)),
                 {round6(Snakeport.Array.to_list(coef)), round6(intercept)}}
              end)

            send(parent, {:b_predicted, self(), result})
            hold_until_stopped()
        end
      end)

    a =
      spawn(fn ->
        SessionContext.with_session([session_id: session_id], fn ->
          {:ok, model} = Snakeport.call("sklearn.linear_model", "LinearRegression", [])
          {:ok, _} = Snakeport.method(model, "fit", [[[0.0], [1.0], [2.0]], [1.0, 3.0, 5.0]])
          send(b, {:model, session_id, model})
        end)

        hold_until_stopped()
      end)

    {predictions, coef} = receive_or_raise({:b_predicted, b}, "process B never predicted")
    %{predictions: predictions, coef: coef, a: a, b: b, session_id: session_id}
  end

  defp round6(list) when is_list(list), do: Enum.map(list, &round6/1)
  defp round6(x) when is_float(x), do: Float.round(x, 6)

  # ms for four processes each sleeping 0.2 s in Python, in `instance`.
  defp sleeps(instance) do
    started = System.monotonic_time(:millisecond)

    1..4
    |> Enum.map(fn _ ->
      Task.async(fn -> Snakeport.call!("time", "sleep", [0.2], instance: instance) end)
    end)
    |> Task.await_many(10_000)

    System.monotonic_time(:millisecond) - started
  end

  defp release_threaded(session_id),
    do: Snakeport.release_session(session_id, instance: @threaded)

  defp await_released_event(session_id) do
    receive do
      {:session_released, %{session_id: ^session_id} = meta} -> Map.take(meta, [:reason])
    after
      5_000 -> raise "no release event for session #{session_id}"
    end
  end

  # The harness forgets a session at once and tells its worker to release it (an
  # asynchronous message): poll the worker's own ref count, with a deadline.
  defp show_python_refs do
    case wait_python_refs(0) do
      {:ok, 0, ms} -> show("  Python: refs held by the worker(s) (#{ms} ms)", 0)
      {:timeout, n} -> raise "the worker still holds #{inspect(n)} refs"
    end
  end

  # ---------------------------------------------------------------------------------
  # Helpers (public ones are used by the tests too)
  # ---------------------------------------------------------------------------------

  @doc """
  Number of refs the worker holds for `session_id`, or `:released` when the session is
  gone (`session_info/2` answers `session_not_found`).
  """
  @spec session_refs(String.t()) :: non_neg_integer() | :released | {:error, atom()}
  def session_refs(session_id) do
    case Snakeport.session_info(session_id) do
      {:ok, %{refs: n}} -> n
      {:error, %Snakeport.Error{reason: :session_not_found}} -> :released
      {:error, %Snakeport.Error{} = e} -> {:error, e.reason}
    end
  end

  @doc "Total refs held in Python by all workers (the workers' own count, via `Snakeport.stats/1`)."
  @spec total_refs() :: non_neg_integer()
  def total_refs, do: Snakeport.stats!().refs

  @doc """
  Polls (bounded) until the worker(s) hold exactly `expected` refs in all.
  Returns `{:ok, expected, elapsed_ms}` or `{:timeout, last_count}`.
  """
  @spec wait_python_refs(non_neg_integer(), non_neg_integer()) ::
          {:ok, non_neg_integer(), non_neg_integer()} | {:timeout, term()}
  def wait_python_refs(expected, timeout_ms \\ 5_000) do
    MixSample.Wait.until(
      fn ->
        case total_refs() do
          ^expected -> {:ok, expected}
          n -> n
        end
      end,
      timeout_ms
    )
  end

  @doc """
  Polls (bounded) until the harness no longer knows `session_id` (`session_info/2`
  answers `session_not_found`). The harness then tells the worker to release the session's
  objects; check that with `wait_python_refs/2`.
  Returns `{:ok, :released, elapsed_ms}` or `{:timeout, last}`.
  """
  @spec wait_released(String.t(), non_neg_integer()) ::
          {:ok, :released, non_neg_integer()} | {:timeout, term()}
  def wait_released(session_id, timeout_ms \\ 5_000) do
    MixSample.Wait.until(
      fn ->
        case session_refs(session_id) do
          :released -> {:ok, :released}
          other -> other
        end
      end,
      timeout_ms
    )
  end

  @doc "Stops a demo/test owner process and waits for its `:DOWN`."
  @spec stop_and_wait(pid(), timeout()) :: :ok
  def stop_and_wait(pid, timeout_ms \\ 5_000) do
    mref = Process.monitor(pid)
    send(pid, :stop)

    receive do
      {:DOWN, ^mref, :process, ^pid, _} -> :ok
    after
      timeout_ms -> raise "process #{inspect(pid)} did not stop"
    end
  end

  defp serve(predict) do
    receive do
      {:again, from} ->
        send(from, {:b_predicted, self(), predict.()})
        serve(predict)

      :stop ->
        :ok
    end
  end

  @doc false
  def hold_until_stopped do
    receive do
      :stop -> :ok
    end
  end

  defp receive_or_raise({tag, pid}, message) do
    receive do
      {^tag, ^pid, value} -> value
    after
      10_000 -> raise message
    end
  end

  # `{:error, reason}`, plus the cause when the error names one (e.g. why a ref is gone).
  defp brief({:error, %Snakeport.Error{reason: reason, details: %{cause: cause}}}),
    do: {:error, reason, cause: cause}

  defp brief({:error, %Snakeport.Error{reason: reason}}), do: {:error, reason}

  defp brief(other), do: other

  defp worker_line do
    stats = Snakeport.stats!()

    for w <- stats.workers do
      line(
        "worker #{w.index}: Python #{w[:python]}, snakeport #{w[:snakeport]}, " <>
          "OS pid #{w.os_pid} (pool of #{stats.pool_size})"
      )
    end
  end

  defp heading(text) do
    IO.puts("")
    IO.puts(IO.ANSI.format([:bright, "== ", text, " =="]))
  end

  defp line(text), do: IO.puts(text)

  defp show(label, value) do
    IO.puts(String.pad_trailing(label, 46) <> " => " <> inspect(value, pretty: false, limit: 20))
  end
end
