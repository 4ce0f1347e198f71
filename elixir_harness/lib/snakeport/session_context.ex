defmodule Snakeport.SessionContext do
  @moduledoc """
  Scoped session context for Python calls.

  Sessions control the lifecycle of Python object references (refs). Each session is
  isolated: a ref of one session is rejected in another (`:session_mismatch`).

  ## Automatic vs explicit sessions

  A process that calls Python without a session context gets its own **auto-session**,
  released when that process dies. Use an explicit session when you need

    * several processes to use the same Python objects,
    * refs that outlive a single process,
    * control over limits (`:max_refs`, `:ttl_seconds`) or cleanup timing.

  ## Usage

      # Explicit session with a chosen id: other processes may adopt it.
      Snakeport.SessionContext.with_session([session_id: "my-session"], fn ->
        {:ok, counter} = Snakeport.call("collections", "Counter", [["a", "b", "a"]], result: :ref)
        counter
      end)

      # Scoped session with a generated id.
      Snakeport.SessionContext.with_session(fn ->
        {:ok, buf} = Snakeport.call("io", "StringIO", [])
        {:ok, _} = Snakeport.method(buf, "write", ["hello"])
        Snakeport.method!(buf, "getvalue", [])
      end)

  ## Ownership and cleanup

  Every process that adopts a session id - in `with_session/2`, or by using it in a call
  (the `:session` option, or a ref of that session) - becomes one of its **owners**. The
  session, and every Python object it holds, is released in the worker:

    * when its **last** owner process dies;
    * when `Snakeport.release_session/2` is called;
    * when it has not been used for `ttl_seconds`.

  `with_session/2` does not release the session when the function returns (other processes
  may be using it); it restores the previous context.

  ## When a worker dies

  Each session is pinned to one worker; when that worker dies its sessions are **lost**
  (calls in flight return `:worker_exited`). The two kinds then differ:

    * a lost **auto-session** does not block its process: its next call that does not use
      the lost session's refs runs in a new auto-session on a live worker; the old refs
      answer `:session_lost`;
    * a lost **explicit** session answers `:session_lost` to every call and every ref
      until `Snakeport.release_session/2`: its owners must learn that its objects are gone.
      After the release the id starts afresh.

  ## Sharing refs across processes

      # Process A
      session_id = "shared-" <> Integer.to_string(System.unique_integer([:positive]))
      SessionContext.with_session([session_id: session_id], fn ->
        {:ok, model} = Snakeport.call("my_models", "load", [])
        send(process_b, {:model, session_id, model})
      end)

      # Process B adopts the same session, so the session lives while A or B lives.
      receive do
        {:model, session_id, model} ->
          SessionContext.with_session([session_id: session_id], fn ->
            Snakeport.method(model, "predict", [[1.0, 2.0]])
          end)
      end

  ## Instances

  A context belongs to one Snakeport instance (`:instance`, default `Snakeport`): its
  session lives there, `with_session/2` makes it the process's current context **of that
  instance**, and each instance has its own current context. Calls pick an instance with
  their `:instance` option (see `Snakeport`), so calls inside `with_session/2` for another
  instance than `Snakeport` name it too:

      SessionContext.with_session([instance: MyApp.ML], fn ->
        Snakeport.call("my_models", "load", [], instance: MyApp.ML)
      end)

  Passing the context itself as `session: ctx` (or to `Snakeport.release_session/2` and
  `Snakeport.session_info/2`) needs no `:instance`: the context remembers it.

  ## Options

    * `:session_id` - the session id (default: generated).
    * `:instance` - the Snakeport instance the session lives in (default: `Snakeport`).
    * `:max_refs` - maximum live refs in the session (default: the instance's
      `session_store: [default_max_refs: ...]`, 10_000 unless configured); beyond it a call
      that would create more fails with `:max_refs_exceeded`.
    * `:ttl_seconds` - the session (and each of its refs) is released after this many
      seconds without use (default: the instance's `session_store: [default_ttl: ...]`,
      3600 unless configured).
    * `:overflow` - what a call whose result would take the session past `:max_refs` does:
      `:error` (it fails with `:max_refs_exceeded`, nothing is stored) or `:evict_lru` (the
      least recently used refs are released to make room, reported with a
      `[:snakeport, :worker, :refs_evicted]` event). Default: the instance's
      `session_store: [default_overflow: ...]`, `:error` unless configured.
    * `:tags` - a map of metadata for debugging (default: `%{}`), also stored by the worker.
    * `:placement` - where the session goes when this context creates it, in a cluster of
      nodes running the instance (default: the instance's `:placement`, `:local` unless
      configured): `:local`, `:any`, `{:node, node}` or `{:tags, [atom]}` (see *Running on
      several nodes* in the README). A session that exists stays where it is.

  `nil` limits mean "the instance's default": the worker applies it when the session is
  opened, and `Snakeport.session_info/2` reports the value in force. A session's limits are
  fixed by the process that creates it. A later adopter that states a limit (`:max_refs`,
  `:ttl_seconds`, `:overflow`, non-empty `:tags`) different from the session's gets
  `{:error, %Snakeport.Error{reason: :session_options_conflict}}` from its calls (and
  `with_session/2` raises it): leave the option out to share the session as it is. A
  session the worker refuses to open (e.g. tags it cannot decode) is not created: the calls
  that needed it return the worker's error.

  ## Sessions of the session store

  `with_session([session_id: id], fun)` also works with a session created by
  `Snakeport.SessionStore.create_session/2`: the process uses it (its refs, its state) but
  does not become its owner in the sense above: a store session lives until its TTL passes
  without use or it is deleted, whoever used it.
  """

  alias Snakeport.{Client, Options, Sessions}

  @enforce_keys [:session_id]
  defstruct [
    :session_id,
    :owner_pid,
    instance: Snakeport,
    max_refs: nil,
    ttl_seconds: nil,
    overflow: nil,
    tags: %{},
    created_at: nil,
    placement: nil
  ]

  @type t :: %__MODULE__{
          session_id: String.t(),
          owner_pid: pid(),
          instance: atom(),
          max_refs: pos_integer() | nil,
          ttl_seconds: pos_integer() | nil,
          overflow: :error | :evict_lru | nil,
          tags: map(),
          created_at: integer(),
          placement: Snakeport.Cluster.placement() | nil
        }

  # The process's current contexts: %{instance => context}.
  @key :"$snakeport_session_contexts"

  @doc """
  Creates a new session context (it is not made current, and not registered yet).

  Raises `ArgumentError` on invalid options.

      iex> ctx = Snakeport.SessionContext.create(session_id: "doc-session", max_refs: 5)
      iex> {ctx.session_id, ctx.instance, ctx.max_refs, ctx.ttl_seconds, ctx.owner_pid == self()}
      {"doc-session", Snakeport, 5, nil, true}

      iex> Snakeport.SessionContext.create(max_refs: -1)
      ** (ArgumentError) expected :max_refs to be a positive integer, got: -1
  """
  @spec create(keyword()) :: t()
  def create(opts \\ []) do
    opts =
      Keyword.validate!(opts,
        session_id: nil,
        instance: Snakeport,
        max_refs: nil,
        ttl_seconds: nil,
        overflow: nil,
        tags: %{},
        placement: nil
      )

    session_id =
      case opts[:session_id] do
        nil -> Sessions.new_id("session-")
        id when is_binary(id) and id != "" -> id
        other -> Options.invalid!(:session_id, "a non-empty string", other)
      end

    tags = opts[:tags]
    if not is_map(tags), do: Options.invalid!(:tags, "a map", tags)

    %__MODULE__{
      session_id: session_id,
      owner_pid: self(),
      instance: Options.name!(:instance, opts[:instance]),
      max_refs: optional_pos_integer!(:max_refs, opts[:max_refs]),
      ttl_seconds: optional_pos_integer!(:ttl_seconds, opts[:ttl_seconds]),
      overflow: opts[:overflow] && Options.overflow!(:overflow, opts[:overflow]),
      tags: tags,
      created_at: System.system_time(:millisecond),
      placement: opts[:placement] && Snakeport.Cluster.placement!(:placement, opts[:placement])
    }
  end

  defp optional_pos_integer!(_key, nil), do: nil
  defp optional_pos_integer!(key, value), do: Options.pos_integer!(key, value)

  @doc """
  Gets the process's current session context of `instance` (`nil` when none).
  """
  @spec current(atom()) :: t() | nil
  def current(instance \\ Snakeport) do
    case Process.get(@key) do
      %{^instance => ctx} -> ctx
      _ -> nil
    end
  end

  @doc """
  Makes `ctx` the current session context of its instance; returns the previous one.
  """
  @spec put_current(t()) :: t() | nil
  def put_current(%__MODULE__{instance: instance} = ctx) do
    contexts = Process.get(@key) || %{}
    Process.put(@key, Map.put(contexts, instance, ctx))
    Map.get(contexts, instance)
  end

  @doc """
  Clears the current session context of `instance`; returns the one that was current.
  """
  @spec clear_current(atom()) :: t() | nil
  def clear_current(instance \\ Snakeport) do
    contexts = Process.get(@key) || %{}
    {ctx, rest} = Map.pop(contexts, instance)
    if rest == %{}, do: Process.delete(@key), else: Process.put(@key, rest)
    ctx
  end

  @doc """
  Runs `fun` within a new session with a generated id. See `with_session/2`.
  """
  @spec with_session((() -> result)) :: result when result: term()
  def with_session(fun) when is_function(fun, 0), do: with_session([], fun)

  @doc """
  Runs `fun` within the session described by `opts` (see the module doc for the options).

  The calling process adopts the session at once (it becomes an owner, and the session is
  created if it does not exist), then `fun` runs with the session as the current context
  of its instance; the previous context is restored afterwards. The session is released
  when its last owner dies, on `Snakeport.release_session/2`, or after its TTL.

  Raises `Snakeport.Error` (`:session_options_conflict`) when the session exists with
  other limits than those `opts` state (see the module doc).
  """
  @spec with_session(keyword(), (() -> result)) :: result when result: term()
  def with_session(opts, fun) when is_list(opts) and is_function(fun, 0) do
    ctx = create(opts)

    # Adopt now, so that this process owns the session even before its first call. An
    # error here (e.g. the quota, or an instance that is not running) is reported again by
    # the calls made inside `fun`; options that conflict with the session's are raised now.
    with {:ok, inst, timeout} <- Client.admin([], ctx),
         {:error, %Snakeport.Error{reason: :session_options_conflict} = error} <-
           Sessions.checkout(inst, ctx, nil, timeout) do
      raise error
    end

    previous = put_current(ctx)

    try do
      fun.()
    after
      if previous, do: put_current(previous), else: clear_current(ctx.instance)
    end
  end
end
