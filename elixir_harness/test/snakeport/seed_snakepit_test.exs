defmodule Snakeport.SeedSnakepitTest do
  # Every example of shared/seeds/snakepit_session_scoping.md, run against the real worker
  # as written there, modulo module names:
  #
  #   SessionStore                         -> Snakeport.SessionStore (aliased)
  #   Snakepit.execute(tool, params, session_id: id)
  #                                        -> Snakeport.call("seed_adapter", "execute", [tool, params], session: id)
  #   config :snakepit, :session_store     -> config :snakeport, :session_store
  #   [:snakepit, :bridge, :session, ...]  -> [:snakeport, :session, ...]
  #   ZeroCopy tensors                     -> large binaries (request-scoped; see the last test)
  #
  # The Python side (the adapter with its module-level cache and Elixir-side session
  # state) is test/python/seed_adapter.py. The examples call the default instance, so this
  # module starts it (hence async: false).
  use Snakeport.Case, async: false

  import ExUnit.CaptureLog

  alias Snakeport.SessionStore

  @moduletag snakeport: false

  defp start_default(opts \\ []) do
    opts = Keyword.merge([session_store: [cleanup_interval: 100]], opts)
    start_supervised!({Snakeport, Keyword.merge(base_opts(), opts)})
    :ok
  end

  defp generate_id, do: "session-#{System.unique_integer([:positive])}"

  defp events(names) do
    parent = self()
    id = {:seed, make_ref()}

    :ok =
      Snakeport.Telemetry.attach_many(id, names, fn name, m, meta, _ ->
        if meta[:instance] == Snakeport, do: send(parent, {:event, name, m, meta})
      end)

    on_exit(fn -> Snakeport.Telemetry.detach(id) end)
  end

  ## Session Lifecycle > Configuration ------------------------------------------------------------

  test "Configuration: the session store reads its settings from the application config" do
    # config :snakeport, :session_store,
    Application.put_env(:snakeport, :session_store,
      default_ttl: 3600,
      max_sessions: 10_000,
      cleanup_interval: 60_000,
      strict_mode: false
    )

    on_exit(fn -> Application.delete_env(:snakeport, :session_store) end)
    start_supervised!({Snakeport, base_opts()})

    {:ok, session} = SessionStore.create_session(generate_id())
    assert session.ttl == 3600

    assert %{
             default_ttl: 3600,
             max_sessions: 10_000,
             cleanup_interval: 60_000,
             strict_mode: false
           } = Snakeport.Options.validate!([]).session_store
  end

  ## Reference Scoping ------------------------------------------------------------------------------

  test "Module-Level Caching: the expensive model is loaded once per worker, for every request" do
    start_default()
    a = SessionStore.create_session(generate_id()) |> elem(1)
    b = SessionStore.create_session(generate_id()) |> elem(1)

    {:ok, first} = Snakeport.call("seed_adapter", "model_info", [], session: a.id)
    {:ok, again} = Snakeport.call("seed_adapter", "model_info", [], session: b.id)
    # Shared across ALL requests (and sessions): one load.
    assert first == again
    assert first["load"] == 1
  end

  test "Session-Scoped State: stored on the Elixir side, read and written from Python" do
    start_default()
    {:ok, session} = SessionStore.create_session(generate_id())

    # Each request builds a fresh adapter; the state survives in Elixir between them.
    assert {:ok, %{"total" => 5, "calls" => 1}} =
             Snakeport.call("seed_adapter", "execute", ["my_tool", %{"amount" => 5}],
               session: session.id
             )

    assert {:ok, %{"total" => 12, "calls" => 2}} =
             Snakeport.call("seed_adapter", "execute", ["my_tool", %{"amount" => 7}],
               session: session.id
             )

    # The same state, from Elixir.
    assert {:ok, %{"total" => 12}} = SessionStore.get_state(session.id, "my_state")

    # Another session has its own.
    {:ok, other} = SessionStore.create_session(generate_id())

    assert {:ok, %{"total" => 1, "calls" => 1}} =
             Snakeport.call("seed_adapter", "execute", ["my_tool", %{"amount" => 1}],
               session: other.id
             )

    # Dropped with the session.
    :ok = SessionStore.delete_session(session.id)
    assert {:error, :not_found} = SessionStore.get_state(session.id, "my_state")
  end

  ## Cross-Process Reference Passing ----------------------------------------------------------------

  test "When the owner process dies: the session remains until its TTL; others use it by id; same worker" do
    start_default(pool_size: 2)
    events([[:snakeport, :session, :pruned]])
    session_id = generate_id()

    {creator, {:ok, ref}} =
      start_owner(fn ->
        {:ok, session} = SessionStore.create_session(session_id, ttl: 1)
        Snakeport.call("snakeport_harness_testmod", "Box", [42], session: session.id)
      end)

    {:ok, before} = SessionStore.get_session(session_id)
    stop(creator)

    # 1. The session remains in the SessionStore. 2. Other processes can still access it
    # by ID. 3. Worker affinity is preserved.
    assert {:ok, %{worker: worker}} = SessionStore.get_session(session_id)
    assert worker == before.worker and worker == ref.worker
    task = Task.async(fn -> Snakeport.method(ref, "get", [], session: session_id) end)
    assert {:ok, 42} = Task.await(task)

    # ... until its TTL expires.
    assert_receive {:event, [:snakeport, :session, :pruned], %{count: 1},
                    %{reason: :ttl, session_ids: [^session_id]}},
                   5_000

    assert {:error, :not_found} = SessionStore.get_session(session_id)
  end

  defmodule MySessionManager do
    use GenServer

    alias Snakeport.SessionStore

    def start(opts), do: GenServer.start(__MODULE__, opts)

    def init(_) do
      {:ok, session} = SessionStore.create_session(generate_id())
      {:ok, %{session_id: session.id}}
    end

    def terminate(_reason, state) do
      SessionStore.delete_session(state.session_id)
      :ok
    end

    def handle_call(:session_id, _from, state), do: {:reply, state.session_id, state}

    defp generate_id, do: "manager-#{System.unique_integer([:positive])}"
  end

  test "For cleanup on process death: MySessionManager deletes its session in terminate/2" do
    start_default()
    {:ok, manager} = MySessionManager.start([])
    session_id = GenServer.call(manager, :session_id)

    {:ok, _} = Snakeport.call("snakeport_harness_testmod", "Box", [1], session: session_id)
    assert {:ok, %{kind: :store}} = SessionStore.get_session(session_id)

    :ok = GenServer.stop(manager)
    assert {:error, :not_found} = SessionStore.get_session(session_id)
    assert python_refs(Snakeport) == 0
  end

  ## Recommended Patterns --------------------------------------------------------------------------

  def handle_request(params) do
    {:ok, session} = SessionStore.create_session(generate_id(), ttl: 300)

    try do
      result = Snakeport.call("seed_adapter", "execute", ["my_tool", params], session: session.id)
      {:ok, result}
    after
      SessionStore.delete_session(session.id)
    end
  end

  test "Short-Lived Sessions (Request-Scoped)" do
    start_default()
    events([[:snakeport, :session, :created], [:snakeport, :session, :closed]])

    assert {:ok, {:ok, %{"total" => 3}}} = handle_request(%{"amount" => 3})
    assert_received {:event, [:snakeport, :session, :created], _, %{session_id: id, kind: :store}}

    assert_received {:event, [:snakeport, :session, :closed], _,
                     %{session_id: ^id, reason: :explicit}}

    assert {:error, :not_found} = SessionStore.get_session(id)
    assert harness_sessions(Snakeport) == 0

    # The session is deleted even when the request fails.
    assert {:ok, {:error, %Snakeport.Error{reason: :python_error}}} =
             handle_request(%{"amount" => "x"})

    assert harness_sessions(Snakeport) == 0
  end

  def get_or_create_session(user_id) do
    session_id = "user_#{user_id}"

    case SessionStore.get_session(session_id) do
      {:ok, session} ->
        session

      {:error, :not_found} ->
        {:ok, session} = SessionStore.create_session(session_id, ttl: 3600)
        session
    end
  end

  test "Long-Lived Sessions (User Sessions): one session per user across requests" do
    start_default()

    # A request process creates the user's session, stores a model in it, and ends.
    request = fn amount ->
      session = get_or_create_session(42)

      Snakeport.call("seed_adapter", "execute", ["my_tool", %{"amount" => amount}],
        session: session.id
      )
    end

    {first, {:ok, %{"total" => 1}}} = start_owner(fn -> request.(1) end)
    stop(first)

    # The next request, in another process, finds the session and its state.
    {second, {:ok, %{"total" => 3, "calls" => 2}}} = start_owner(fn -> request.(2) end)
    stop(second)

    assert %SessionStore.Session{id: "user_42", ttl: 3600} = get_or_create_session(42)
    assert harness_sessions(Snakeport) == 1
  end

  defmodule MyApp.SharedSession do
    @moduledoc """
    Manages a shared session for background processing.
    """
    use GenServer

    alias Snakeport.SessionStore

    def start_link(opts) do
      GenServer.start_link(__MODULE__, opts, name: __MODULE__)
    end

    def get_session_id do
      GenServer.call(__MODULE__, :get_session_id)
    end

    def init(_opts) do
      {:ok, session} =
        SessionStore.create_session(
          "shared_background_session",
          # 24 hours
          ttl: 86400
        )

      {:ok, %{session_id: session.id}}
    end

    def handle_call(:get_session_id, _from, state) do
      {:reply, state.session_id, state}
    end
  end

  test "Explicit Session Context (For Shared Sessions)" do
    start_default()
    start_supervised!(MyApp.SharedSession)
    session_id = MyApp.SharedSession.get_session_id()
    assert {:ok, %{ttl: 86400}} = SessionStore.get_session(session_id)

    # Background workers share the session's objects.
    {:ok, box} = Snakeport.call("snakeport_harness_testmod", "Box", [10], session: session_id)

    results =
      1..4
      |> Enum.map(fn i ->
        Task.async(fn ->
          Snakeport.method(box, "add", [i], session: MyApp.SharedSession.get_session_id())
        end)
      end)
      |> Enum.map(&Task.await/1)

    assert Enum.all?(results, &match?({:ok, %Snakeport.Ref{}}, &1))
    assert {:ok, %{refs: 5}} = Snakeport.session_info(session_id)
  end

  ## Telemetry Events -------------------------------------------------------------------------------

  test "Session Pruned: count, remaining_sessions; reason :ttl; table_name" do
    start_default()
    events([[:snakeport, :session, :pruned]])
    {:ok, _keep} = SessionStore.create_session(generate_id())
    {:ok, gone} = SessionStore.create_session(generate_id(), ttl: 1)

    assert_receive {:event, [:snakeport, :session, :pruned], %{count: 1, remaining_sessions: 1},
                    %{reason: :ttl, table_name: table, session_ids: [id]}},
                   5_000

    assert id == gone.id
    assert is_atom(table)
  end

  test "Accumulation Warning, and Strict Mode for Development" do
    log =
      capture_log(fn ->
        start_default(
          session_store: [max_sessions: 5, strict_mode: true, cleanup_interval: 60_000]
        )

        events([[:snakeport, :session, :accumulation_warning]])

        for _ <- 1..5, do: {:ok, _} = SessionStore.create_session(generate_id())

        assert_received {:event, [:snakeport, :session, :accumulation_warning],
                         %{current_sessions: 5, max_sessions: 5, utilization: 100.0},
                         %{reason: :threshold_warning, strict_mode: true}}

        assert {:error, %Snakeport.Error{reason: :session_quota_exceeded}} =
                 SessionStore.create_session(generate_id())

        assert_received {:event, [:snakeport, :session, :accumulation_warning],
                         %{current_sessions: 5, max_sessions: 5},
                         %{reason: :quota_exceeded, strict_mode: true}}
      end)

    # Strict mode logs warnings when the session count exceeds 80% of max.
    assert log =~ "session accumulation"
  end

  ## ZeroCopy References -----------------------------------------------------------------------------

  test "request-scoped large data: used within the request, never kept" do
    start_default()
    {:ok, session} = SessionStore.create_session(generate_id())
    tensor = :binary.copy(<<1, 2, 3, 4>>, 1_000_000)

    # Use within the same request.
    assert {:ok, %{"bytes" => 4_000_000}} =
             Snakeport.call("seed_adapter", "process_tensor", [Snakeport.bytes(tensor)],
               session: session.id
             )

    # Nothing of it stays in the session.
    assert {:ok, %{refs: 0}} = Snakeport.session_info(session.id)
  end

  ## Quick Reference -----------------------------------------------------------------------------------

  test "Quick Reference: session ids and session state are cross-process safe; the module cache lives with the worker" do
    start_default()
    {:ok, session} = SessionStore.create_session(generate_id())
    :ok = SessionStore.put_state(session.id, "k", "v")

    task =
      Task.async(fn ->
        {SessionStore.get_state(session.id, "k"),
         Snakeport.call("seed_adapter", "model_info", [], session: session.id)}
      end)

    assert {{:ok, "v"}, {:ok, %{"load" => 1}}} = Task.await(task)
  end
end
