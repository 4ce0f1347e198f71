defmodule Snakeport.SeedSnakeBridgeTest do
  # Every example of shared/seeds/snakebridge_session_context.md, run against the real
  # worker (real scikit-learn and pandas) as written there, modulo module names:
  # SnakeBridge.SessionContext -> Snakeport.SessionContext (aliased), SnakeBridge.call/method
  # -> Snakeport.call/method, SnakeBridge.Runtime.release_session/1 ->
  # Snakeport.release_session/1. The examples call the default instance, so this module
  # starts it (hence async: false).
  use Snakeport.Case, async: false

  alias Snakeport.SessionContext

  @moduletag snakeport: false

  setup do
    start_supervised!(
      {Snakeport,
       Keyword.merge(base_opts(), session_store: [cleanup_interval: 100], pool_size: 2)}
    )

    :ok
  end

  ## Usage ---------------------------------------------------------------------------------------

  test "Explicit session with custom ID: the model ref is accessible by other processes" do
    model =
      Snakeport.SessionContext.with_session([session_id: "my-session"], fn ->
        {:ok, model} = Snakeport.call("sklearn.linear_model", "LinearRegression", [])
        # model ref is accessible by other processes using "my-session"
        model
      end)

    assert %Snakeport.Ref{
             session_id: "my-session",
             type: "sklearn.linear_model._base.LinearRegression"
           } = model

    other =
      Task.async(fn ->
        Snakeport.SessionContext.with_session([session_id: "my-session"], fn ->
          Snakeport.method(model, "fit", [[[1.0], [2.0]], [1.0, 2.0]])
        end)
      end)

    assert {:ok, %Snakeport.Ref{id: id}} = Task.await(other)
    assert id == model.id
  end

  test "Simple scoped session (auto-generated ID): all Python calls inside use the same session" do
    mean =
      Snakeport.SessionContext.with_session(fn ->
        # All Python calls here use the same session
        {:ok, df} = Snakeport.call("pandas", "DataFrame", [[1, 2, 3]])
        {:ok, mean} = Snakeport.method(df, "mean", [])
        assert mean.session_id == df.session_id
        mean
      end)

    assert {:ok, [2.0]} = Snakeport.method(mean, "tolist", [])
    assert String.starts_with?(mean.session_id, "session-")
  end

  ## Session Cleanup -------------------------------------------------------------------------------

  test "cleaned up when all owning processes die (auto-sessions)" do
    {pid, ref} = start_owner(fn -> Snakeport.call!("pandas", "DataFrame", [[1, 2, 3]]) end)
    assert python_refs(Snakeport) == 1
    stop(pid)
    eventually(fn -> released?(ref.session_id, Snakeport) end)
    eventually(fn -> python_refs(Snakeport) == 0 end)
  end

  test "cleaned up when release_session/1 is called explicitly" do
    SessionContext.with_session([session_id: "to-release"], fn ->
      {:ok, _} = Snakeport.call("pandas", "DataFrame", [[1, 2, 3]])
    end)

    assert {:ok, 1} = Snakeport.release_session("to-release")
    assert released?("to-release", Snakeport)
    assert python_refs(Snakeport) == 0
  end

  test "refs exceed TTL (ttl_seconds) or max count (max_refs)" do
    SessionContext.with_session([max_refs: 2, ttl_seconds: 1], fn ->
      {:ok, _} = Snakeport.call("pandas", "DataFrame", [[1]])
      {:ok, _} = Snakeport.call("pandas", "DataFrame", [[2]])

      assert {:error, %Snakeport.Error{reason: :max_refs_exceeded, details: %{limit: 2}}} =
               Snakeport.call("pandas", "DataFrame", [[3]])

      ctx = SessionContext.current()
      # Unused for its TTL: released.
      eventually(fn -> released?(ctx.session_id, Snakeport) end, 10_000)
    end)

    assert python_refs(Snakeport) == 0
  end

  ## Sharing Refs Across Processes -------------------------------------------------------------------

  test "Process A hands a model to process B, which adopts the same session" do
    test_pid = self()

    process_b =
      spawn(fn ->
        data = [3.0, 4.0]

        receive do
          {:model, session_id, ref} ->
            result =
              SessionContext.with_session([session_id: session_id], fn ->
                {:ok, result} = Snakeport.method(ref, "predict", [data])
                result
              end)

            send(test_pid, {:b, result})
        end
      end)

    # Process A
    session_id = "shared--576460752303420525"

    process_a =
      spawn(fn ->
        SessionContext.with_session([session_id: session_id], fn ->
          {:ok, ref} = Snakeport.call("heavy_model", "load", [])
          send(process_b, {:model, session_id, ref})
        end)

        # A lives on for a while (the session lives while A or B lives).
        receive do
          :stop -> :ok
        end
      end)

    assert_receive {:b, [p3, p4]}, 10_000
    assert_in_delta p3, 7.0, 1.0e-9
    assert_in_delta p4, 9.0, 1.0e-9
    assert {:ok, %{owners: owners}} = Snakeport.session_info(session_id)
    assert process_a in owners
    stop(process_a)
    eventually(fn -> released?(session_id, Snakeport) end)
  end

  ## Options and the context API ---------------------------------------------------------------

  test "Options: :session_id, :max_refs (default 10_000), :ttl_seconds (default 3600), :tags" do
    SessionContext.with_session(fn ->
      assert {:ok, %{max_refs: 10_000, ttl_seconds: 3600}} =
               Snakeport.session_info(SessionContext.current())
    end)

    SessionContext.with_session(
      [session_id: "opts", max_refs: 5, ttl_seconds: 60, tags: %{user: "u1"}],
      fn ->
        assert {:ok, %{max_refs: 5, ttl_seconds: 60, tags: %{user: "u1"}}} =
                 Snakeport.session_info("opts")
      end
    )
  end

  test "t(): created_at, max_refs, owner_pid, session_id, tags, ttl_seconds" do
    ctx = SessionContext.create(session_id: "typed", max_refs: 3, ttl_seconds: 10, tags: %{a: 1})

    assert %SessionContext{
             created_at: created_at,
             max_refs: 3,
             owner_pid: owner,
             session_id: "typed",
             tags: %{a: 1},
             ttl_seconds: 10
           } = ctx

    assert is_integer(created_at) and owner == self()
  end

  test "create/1, current/0, put_current/1, clear_current/0, with_session/1,2" do
    assert SessionContext.current() == nil
    ctx = SessionContext.create()
    assert SessionContext.put_current(ctx) == nil
    assert SessionContext.current() == ctx
    {:ok, df} = Snakeport.call("pandas", "DataFrame", [[1]])
    assert df.session_id == ctx.session_id
    assert SessionContext.clear_current() == ctx
    assert SessionContext.current() == nil

    inner =
      SessionContext.with_session([session_id: "outer"], fn ->
        SessionContext.with_session(fn -> SessionContext.current().session_id end)
      end)

    assert inner != "outer"
    assert SessionContext.current() == nil
  end
end
