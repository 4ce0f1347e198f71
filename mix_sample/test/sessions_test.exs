defmodule MixSample.SessionsTest do
  # async: false - the last tests look at the worker's global ref count.
  use ExUnit.Case, async: false

  alias Snakeport.SessionContext

  import MixSample,
    only: [session_refs: 1, wait_released: 1, wait_python_refs: 1, stop_and_wait: 1]

  @xs [0.0, 1.0, 2.5]
  @expected [1.0, 3.0, 6.0]

  # Runs `fun` in a new linked "owner" process that then stays alive (an owner of every
  # session it touched), running more functions on request (`run_in/2`) until
  # `stop_and_wait/1`. Returns {pid, fun's result}.
  defp start_owner(fun) do
    parent = self()

    pid =
      spawn_link(fn ->
        send(parent, {:ran, self(), fun.()})
        owner_loop()
      end)

    assert_receive {:ran, ^pid, result}, 10_000
    {pid, result}
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

  defp run_in(pid, fun) do
    send(pid, {:run, fun, self()})
    assert_receive {:ran, ^pid, result}, 10_000
    result
  end

  # The harness forgot the session, and the worker holds no refs any more. (The test
  # processes hold none by then, and refs of earlier tests drain as their processes exit.)
  defp assert_released_in_python(session_id) do
    assert {:ok, :released, _ms} = wait_released(session_id)
    assert {:ok, 0, _ms} = wait_python_refs(0)
  end

  # Forwards the harness's [:snakeport, :session, :released] events to the test process.
  defp observe_releases do
    test = self()
    id = {__MODULE__, make_ref()}

    :ok =
      Snakeport.Telemetry.attach(
        id,
        [:snakeport, :session, :released],
        fn _event, _measurements, meta, pid -> send(pid, {:released, meta}) end,
        test
      )

    on_exit(fn -> Snakeport.Telemetry.detach(id) end)
  end

  defp shared_id, do: "shared-#{System.unique_integer([:positive])}"

  defp load_in(session_id) do
    SessionContext.with_session([session_id: session_id], fn ->
      Snakeport.call!("sample_model", "load", [])
    end)
  end

  describe "auto-session" do
    test "plain calls from a process without a session context" do
      assert {:ok, root} = Snakeport.call("math", "sqrt", [2])
      assert_in_delta root, 1.41421356, 1.0e-6
      assert {:ok, 2.5} = Snakeport.call("statistics", "mean", [[1, 2, 3, 4]])

      assert {:ok, [3, 2, 1]} =
               Snakeport.call("builtins", "sorted", [[3, 1, 2]], kwargs: %{reverse: true})
    end

    test "an object comes back as a ref in the caller's own session" do
      assert {:ok, %Snakeport.Ref{} = ref} = Snakeport.call("sample_model", "load", [])
      assert {:ok, @expected} = Snakeport.method(ref, "predict", [@xs])
      assert {:ok, %{"slope" => 2.0, "intercept" => 1.0}} = Snakeport.method(ref, "describe", [])
      assert {:ok, 2.0} = Snakeport.get_attr(ref, "slope")
      assert session_refs(ref.session_id) == 1

      # Another process gets another auto-session.
      {pid, other} = start_owner(fn -> Snakeport.call!("sample_model", "load", []) end)
      assert other.session_id != ref.session_id
      assert session_refs(other.session_id) == 1

      assert :ok = Snakeport.release_ref(ref)
      stop_and_wait(pid)
      assert_released_in_python(other.session_id)
    end

    test "an auto-session is released in Python when its process dies" do
      observe_releases()
      {pid, ref} = start_owner(fn -> Snakeport.call!("sample_model", "load", []) end)
      assert session_refs(ref.session_id) == 1
      assert {:ok, %{auto: true, owners: [^pid]}} = Snakeport.session_info(ref.session_id)

      stop_and_wait(pid)
      session_id = ref.session_id
      assert_receive {:released, %{session_id: ^session_id, reason: :owner_down}}, 5_000
      assert_released_in_python(session_id)
    end
  end

  describe "shared session (the SessionContext seed example)" do
    test "process A loads into shared-<unique>, process B adopts the session and predicts" do
      session_id = shared_id()
      parent = self()

      b =
        spawn_link(fn ->
          receive do
            {:model, session_id, ref} ->
              result =
                SessionContext.with_session([session_id: session_id], fn ->
                  Snakeport.method(ref, "predict", [@xs])
                end)

              send(parent, {:b_result, self(), result})
              MixSample.hold_until_stopped()
          end
        end)

      a =
        spawn_link(fn ->
          SessionContext.with_session([session_id: session_id], fn ->
            {:ok, ref} = Snakeport.call("sample_model", "load", [])
            send(b, {:model, session_id, ref})
            send(parent, {:a_loaded, self(), ref})
          end)

          MixSample.hold_until_stopped()
        end)

      assert_receive {:a_loaded, ^a, %Snakeport.Ref{session_id: ^session_id}}, 10_000
      assert_receive {:b_result, ^b, {:ok, @expected}}, 10_000
      # One object, one ref: B used A's ref, it did not load its own.
      assert session_refs(session_id) == 1

      stop_and_wait(a)
      stop_and_wait(b)
      assert_released_in_python(session_id)
    end

    test "owner death: the session outlives its first owner, is released with the last" do
      observe_releases()
      session_id = shared_id()
      {a, ref} = start_owner(fn -> load_in(session_id) end)

      predict = fn ->
        SessionContext.with_session([session_id: session_id], fn ->
          Snakeport.method(ref, "predict", [@xs])
        end)
      end

      {b, {:ok, @expected}} = start_owner(predict)
      assert session_refs(session_id) == 1

      # A exits; B still owns the session: its ref is still held and still works.
      stop_and_wait(a)
      assert {:ok, @expected} = run_in(b, predict)
      assert session_refs(session_id) == 1

      # B exits too: no owner is left, the harness releases the session in Python.
      refute_received {:released, %{session_id: ^session_id}}
      stop_and_wait(b)
      assert_receive {:released, %{session_id: ^session_id, reason: :owner_down}}, 5_000
      assert_released_in_python(session_id)
    end

    test "if every owner exits before B adopts the session, B's use fails with :ref_released" do
      session_id = shared_id()
      {a, ref} = start_owner(fn -> load_in(session_id) end)
      stop_and_wait(a)
      assert_released_in_python(session_id)

      # B adopts the id: that is a new, empty session; A's model is gone.
      {b, result} =
        start_owner(fn ->
          SessionContext.with_session([session_id: session_id], fn ->
            Snakeport.method(ref, "predict", [@xs])
          end)
        end)

      assert {:error,
              %Snakeport.Error{reason: :ref_released, details: %{cause: :session_released}}} =
               result

      stop_and_wait(b)
    end

    test "a ref of one session is rejected in another session" do
      {owner, ref} = start_owner(fn -> load_in(shared_id()) end)

      assert {:error, %Snakeport.Error{reason: :session_mismatch}} =
               SessionContext.with_session([session_id: shared_id()], fn ->
                 Snakeport.method(ref, "predict", [@xs])
               end)

      stop_and_wait(owner)
      assert_released_in_python(ref.session_id)
    end
  end

  describe "releasing" do
    test "release_ref, then a use of the ref fails with :ref_released" do
      {:ok, ref} = Snakeport.call("sample_model", "load", [])
      assert session_refs(ref.session_id) == 1
      assert :ok = Snakeport.release_ref(ref)
      assert session_refs(ref.session_id) == 0

      assert {:error, %Snakeport.Error{reason: :ref_released}} =
               Snakeport.method(ref, "predict", [@xs])

      # Idempotent.
      assert :ok = Snakeport.release_ref(ref)
    end

    test "release_session, then a use of its refs fails with :ref_released" do
      {session_id, m1, m2} =
        SessionContext.with_session(fn ->
          m1 = Snakeport.call!("sample_model", "load", [])
          m2 = Snakeport.call!("sample_model", "load", [])
          {m1.session_id, m1, m2}
        end)

      assert session_refs(session_id) == 2
      assert {:ok, 2} = Snakeport.release_session(session_id)
      assert session_refs(session_id) == :released
      # Idempotent.
      assert {:ok, 0} = Snakeport.release_session(session_id)

      for m <- [m1, m2] do
        assert {:error, %Snakeport.Error{reason: :ref_released}} =
                 Snakeport.method(m, "predict", [@xs])
      end
    end
  end

  describe "worker lifetime" do
    test "module-level cache: the expensive fit runs once per worker, across sessions" do
      {:ok, _} = Snakeport.call("sample_model", "load", [])
      {:ok, count} = Snakeport.call("sample_model", "load_count", [])
      {a, _} = start_owner(fn -> load_in(shared_id()) end)
      {b, _} = start_owner(fn -> load_in(shared_id()) end)
      assert {:ok, ^count} = Snakeport.call("sample_model", "load_count", [])
      assert count == 1
      stop_and_wait(a)
      stop_and_wait(b)
    end

    test "when all owners are gone the worker's ref count returns to 0" do
      owners =
        for _ <- 1..3 do
          session_id = shared_id()
          {pid, _ref} = start_owner(fn -> load_in(session_id) end)
          pid
        end

      {auto, _} = start_owner(fn -> Snakeport.call!("sample_model", "load", []) end)
      assert MixSample.total_refs() >= 4

      Enum.each([auto | owners], &stop_and_wait/1)

      # Earlier tests' processes are gone as well, so everything must drain to zero.
      assert {:ok, 0, _ms} = wait_python_refs(0)

      # ...and Python really freed the objects (nothing else holds a TinyModel).
      assert {:ok, 0, _ms} =
               MixSample.Wait.until(fn ->
                 case Snakeport.call!("sample_model", "live_models", []) do
                   0 -> {:ok, 0}
                   n -> n
                 end
               end)
    end
  end

  describe "a second instance (MixSample.Threaded, threads: 4)" do
    @threaded MixSample.Threaded

    test "runs beside the default one: its own workers and sessions; its refs remember it" do
      assert %{workers: [%{threads: 4, os_pid: threaded_pid}]} =
               Snakeport.stats!(instance: @threaded)

      assert %{workers: [%{threads: 1, os_pid: default_pid}]} = Snakeport.stats!()
      assert threaded_pid != default_pid

      {pid, ref} =
        start_owner(fn -> Snakeport.call!("sample_model", "load", [], instance: @threaded) end)

      assert %Snakeport.Ref{instance: @threaded} = ref

      assert {:ok, %{instance: @threaded, refs: 1}} =
               Snakeport.session_info(ref.session_id, instance: @threaded)

      # The default instance knows nothing of that session.
      assert session_refs(ref.session_id) == :released

      # method/4 on the ref goes to its instance; another instance refuses it.
      assert {:ok, @expected} = run_in(pid, fn -> Snakeport.method(ref, "predict", [@xs]) end)

      assert {:error, %Snakeport.Error{reason: :instance_mismatch}} =
               run_in(pid, fn -> Snakeport.method(ref, "predict", [@xs], instance: Snakeport) end)

      # Its sessions end with their owners, as in the default instance.
      stop_and_wait(pid)

      assert {:ok, :released, _} =
               MixSample.Wait.until(fn ->
                 case Snakeport.session_info(ref.session_id, instance: @threaded) do
                   {:error, %Snakeport.Error{reason: :session_not_found}} -> {:ok, :released}
                   other -> other
                 end
               end)
    end
  end
end
