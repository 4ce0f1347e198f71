defmodule Snakeport.SessionStoreTest do
  # Snakeport.SessionStore: sessions without owner processes, against the real worker.
  use Snakeport.Case, async: true

  alias Snakeport.SessionStore
  alias Snakeport.SessionStore.Session

  @mod "snakeport_harness_testmod"
  @moduletag snakeport: [session_store: [cleanup_interval: 100]]

  defp id, do: "store-#{System.unique_integer([:positive])}"

  test "create, get, delete; plain :not_found and :already_exists" do
    sid = id()

    assert {:ok, %Session{id: ^sid, kind: :store, ttl: 3600, max_refs: 10_000, lost: false} = s} =
             SessionStore.create_session(sid, instance: @instance)

    assert s.instance == @instance and is_integer(s.created_at)
    assert {:error, :already_exists} = SessionStore.create_session(sid, instance: @instance)
    assert {:ok, %Session{id: ^sid}} = SessionStore.get_session(sid, instance: @instance)
    assert :ok = SessionStore.delete_session(sid, instance: @instance)
    assert {:error, :not_found} = SessionStore.get_session(sid, instance: @instance)
    # Idempotent.
    assert :ok = SessionStore.delete_session(sid, instance: @instance)
  end

  test "the session outlives its creator; any process uses it by id" do
    sid = id()

    {creator, {:ok, box}} =
      start_owner(fn ->
        {:ok, session} = SessionStore.create_session(sid, instance: @instance)
        Snakeport.call(@mod, "Box", [7], session: session.id, instance: @instance)
      end)

    stop(creator)

    # Another process, by id; then a third, with with_session. Neither owns it.
    {user, {:ok, 7}} =
      start_owner(fn -> Snakeport.method(box, "get", [], session: sid, instance: @instance) end)

    assert {:ok, 7} =
             SessionContext.with_session([instance: @instance, session_id: sid], fn ->
               Snakeport.method(box, "get", [], instance: @instance)
             end)

    stop(user)
    # The deaths of its users released nothing.
    assert {:ok, %{kind: :store, refs: 1}} = Snakeport.session_info(sid, instance: @instance)
    assert {:ok, 7} = Snakeport.method(box, "get", [], instance: @instance)
    :ok = SessionStore.delete_session(sid, instance: @instance)
    assert python_refs(@instance) == 0

    assert {:error, %Error{reason: :ref_released}} =
             Snakeport.method(box, "get", [], instance: @instance)
  end

  test "TTL from the last access: get_session and calls keep it, then it expires in Python" do
    capture_events([[:snakeport, :session, :pruned]], @instance)
    sid = id()
    {:ok, _} = SessionStore.create_session(sid, ttl: 1, instance: @instance)
    {:ok, _box} = Snakeport.call(@mod, "Box", [1], session: sid, instance: @instance)

    # Used every 400 ms for 2 s: alive throughout.
    for _ <- 1..5 do
      receive do
      after
        400 -> :ok
      end

      assert {:ok, _} = SessionStore.get_session(sid, instance: @instance)
    end

    refute_received {:event, [:snakeport, :session, :pruned], _, _}

    assert_receive {:event, [:snakeport, :session, :pruned], %{count: 1},
                    %{reason: :ttl, session_ids: [^sid]}},
                   5_000

    assert {:error, :not_found} = SessionStore.get_session(sid, instance: @instance)
    eventually(fn -> python_refs(@instance) == 0 end)
  end

  test ":owner makes the session end with a process" do
    sid = id()

    {owner, {:ok, _}} =
      start_owner(fn -> SessionStore.create_session(sid, owner: self(), instance: @instance) end)

    {other, {:ok, _}} =
      start_owner(fn -> Snakeport.call(@mod, "Box", [1], session: sid, instance: @instance) end)

    stop(other)
    assert {:ok, _} = SessionStore.get_session(sid, instance: @instance)
    stop(owner)
    eventually(fn -> released?(sid, @instance) end)
    eventually(fn -> python_refs(@instance) == 0 end)
  end

  test "get_or_create_session is atomic" do
    sid = id()

    sessions =
      1..8
      |> Enum.map(fn _ ->
        Task.async(fn -> SessionStore.get_or_create_session(sid, instance: @instance) end)
      end)
      |> Enum.map(&Task.await/1)

    assert [{:ok, %Session{id: ^sid, created_at: t}}] =
             Enum.uniq_by(sessions, fn {:ok, s} -> s.created_at end)

    assert is_integer(t)
    assert harness_sessions(@instance) == 1
  end

  test "state: put, get, delete; dropped with the session" do
    sid = id()
    assert {:error, :not_found} = SessionStore.put_state(sid, :k, 1, instance: @instance)
    {:ok, _} = SessionStore.create_session(sid, instance: @instance)
    assert {:error, :not_found} = SessionStore.get_state(sid, :k, instance: @instance)
    assert :ok = SessionStore.put_state(sid, :k, %{any: ["term"]}, instance: @instance)
    assert {:ok, %{any: ["term"]}} = SessionStore.get_state(sid, :k, instance: @instance)
    assert :ok = SessionStore.delete_state(sid, :k, instance: @instance)
    assert {:error, :not_found} = SessionStore.get_state(sid, :k, instance: @instance)
    :ok = SessionStore.put_state(sid, :k, 2, instance: @instance)
    :ok = SessionStore.delete_session(sid, instance: @instance)
    {:ok, _} = SessionStore.create_session(sid, instance: @instance)
    assert {:error, :not_found} = SessionStore.get_state(sid, :k, instance: @instance)
  end

  test "options are validated" do
    for {opts, message} <- [
          {[ttl: 0], "expected :ttl to be a positive integer, got: 0"},
          {[max_refs: -1], "expected :max_refs to be a positive integer, got: -1"},
          {[overflow: :drop], "expected :overflow to be :error or :evict_lru, got: :drop"},
          {[tags: [1]], "expected :tags to be a map, got: [1]"},
          {[owner: :me], "expected :owner to be a pid, got: :me"}
        ] do
      assert_raise ArgumentError, message, fn ->
        SessionStore.create_session("x", [instance: @instance] ++ opts)
      end
    end

    assert_raise ArgumentError, ~r/unknown keys \[:ttl_seconds\]/, fn ->
      SessionStore.create_session("x", ttl_seconds: 1)
    end

    assert_raise ArgumentError, "expected :session_id to be a non-empty string, got: 42", fn ->
      SessionStore.get_session(42)
    end

    assert {:error, %Error{reason: :not_started}} = SessionStore.get_session("x", instance: Nope)
  end

  test "get_session describes any kind of session" do
    {:ok, ref} = Snakeport.call(@mod, "Box", [1], instance: @instance)

    assert {:ok, %Session{kind: :auto, worker: 0}} =
             SessionStore.get_session(ref.session_id, instance: @instance)
  end
end
