defmodule Snakeport.SessionStore do
  @moduledoc """
  Sessions that belong to no process: they live until their TTL passes without use, or
  until they are deleted, and any process may use them by id.

  This is the session store of Snakepit's session-scoping guide. Sessions made here differ
  from the owner-tracked sessions of `Snakeport.SessionContext` and from auto-sessions only
  in what ends them:

  | Session | Released when |
  |---|---|
  | auto-session (a process calls without a context) | its process dies, its TTL passes, or `Snakeport.release_session/2` |
  | `SessionContext.with_session/2` (owned) | its last owner process dies, its TTL passes, or `Snakeport.release_session/2` |
  | `SessionStore.create_session/2` (store) | its TTL passes without use, or `delete_session/2` (or its last `:owner` dies, when given) |

  A session is in use while a call runs in it: its TTL counts from the end of its last call
  (or its last `get_session/2`), and no sweep releases a session under a running call.

  ## Usage

      {:ok, session} = Snakeport.SessionStore.create_session("user_42", ttl: 3600)
      {:ok, model} = Snakeport.call("sklearn.linear_model", "LinearRegression", [],
                                    session: session.id)

      # Any process, later:
      {:ok, session} = Snakeport.SessionStore.get_session("user_42")
      Snakeport.method(model, "predict", [[[1.0]]], session: session.id)
      Snakeport.SessionContext.with_session([session_id: "user_42"], fn -> ... end)

      :ok = Snakeport.SessionStore.delete_session("user_42")

  A process that creates a session and wants it gone when it dies makes itself its owner
  (`create_session(id, owner: self())`) or deletes it in its `terminate/2`.

  Once a store session has expired or been deleted, a call naming its id (`session: id`)
  creates an ordinary owner-tracked session with that id, as for any unknown id: recreate a
  store session with `create_session/2` or `get_or_create_session/2` first (the
  get-or-create pattern of a per-user session does).

  Session ids are strings. `get_session/2` returns `{:error, :not_found}` and
  `create_session/2` `{:error, :already_exists}` as plain atoms (the seed API); other
  failures are `{:error, %Snakeport.Error{}}`.

  ## Session state

  Each session has a key-value state kept in the harness, dropped with the session: from
  Elixir with `put_state/4`, `get_state/3`, `delete_state/3`; from Python code running in
  the session with the built-in tools:

      ctx = snakeport.context()
      state = ctx.call_elixir_tool("get_session_state", key="my_state")
      ctx.call_elixir_tool("set_session_state", key="my_state", value=result)

  Keys and values are any terms (Python strings arrive as binaries; Python objects that
  are not data are kept as refs of the session).

  ## Options

  Of `create_session/2` and `get_or_create_session/2`:

    * `:ttl` - seconds the session lives unused (default: the instance's
      `session_store: [default_ttl: ...]`, 3600 unless configured); each of its refs is
      also released after that long without use.
    * `:max_refs` - refs the session may hold (default: `session_store: [default_max_refs]`).
    * `:overflow` - `:error` or `:evict_lru` (default: `session_store: [default_overflow]`),
      see `Snakeport.SessionContext`.
    * `:tags` - a map of metadata (default `%{}`).
    * `:owner` - a pid whose death releases the session (default: none).
    * `:instance` - the Snakeport instance (default `Snakeport`).
    * `:timeout` - ms to wait for the worker to open the session (default: the instance's
      `:call_timeout`).
    * `:placement` - where a new session goes in a cluster (default: the instance's
      `:placement`; see `Snakeport.SessionContext`). An id that another node of the
      cluster has is that node's session: `create_session/2` returns
      `{:error, :already_exists}`, `get_or_create_session/2` that session.

  In a cluster (see *Running on several nodes* in the README), every function here works
  from any node: a session of another node is read, changed and deleted there.

  `get_or_create_session/2` on an existing session whose limits differ from the ones it
  states returns `{:error, %Snakeport.Error{reason: :session_options_conflict}}`.
  """

  alias Snakeport.{Client, Error, Options, Sessions}

  defmodule Session do
    @moduledoc """
    A session of the session store (or any session, as `Snakeport.SessionStore` describes
    it).

      * `:id` - the session id, to pass as `session: id` or `with_session(session_id: id)`.
      * `:instance` - its Snakeport instance.
      * `:kind` - `:store` (made by `Snakeport.SessionStore`), `:owned` (a session
        context's, or a shared id's) or `:auto`.
      * `:ttl` - seconds it lives unused; `:max_refs`; `:overflow`; `:tags` (as its worker
        acknowledged them).
      * `:created_at`, `:last_access` - Unix ms.
      * `:worker` - the index of the worker that holds its objects; `:node`, its node.
      * `:lost` - `true` when that worker died since (its objects are gone: calls answer
        `:session_lost` until it is deleted).
    """

    @enforce_keys [:id]
    defstruct [
      :id,
      instance: Snakeport,
      kind: :store,
      ttl: nil,
      max_refs: nil,
      overflow: :error,
      tags: nil,
      created_at: nil,
      last_access: nil,
      worker: nil,
      node: nil,
      lost: false
    ]

    @type t :: %__MODULE__{
            id: String.t(),
            instance: atom(),
            kind: :store | :owned | :auto,
            ttl: number(),
            max_refs: pos_integer(),
            overflow: :error | :evict_lru,
            tags: term(),
            created_at: integer(),
            last_access: integer(),
            worker: non_neg_integer(),
            node: node(),
            lost: boolean()
          }
  end

  @type opts :: [
          ttl: pos_integer(),
          max_refs: pos_integer(),
          overflow: :error | :evict_lru,
          tags: map(),
          owner: pid(),
          instance: atom(),
          timeout: timeout(),
          placement: Snakeport.Cluster.placement()
        ]

  @doc """
  Creates the session `id`, opened in a worker before this returns.

  Returns `{:ok, %Snakeport.SessionStore.Session{}}`, `{:error, :already_exists}` when a
  session with that id exists (of any kind), or `{:error, %Snakeport.Error{}}` (quota,
  no worker, the worker refused the options). Raises `ArgumentError` on invalid options.
  """
  @spec create_session(String.t(), opts()) ::
          {:ok, Session.t()} | {:error, :already_exists | Error.t()}
  def create_session(id, opts \\ []), do: create(id, opts, :create)

  @doc """
  Returns the session `id`, creating it with `opts` when it does not exist (atomically:
  two processes asking at once get the same session).

  Returns `{:ok, session}`, or `{:error, %Snakeport.Error{}}`
  (`:session_options_conflict` when it exists with other limits than `opts` state).
  """
  @spec get_or_create_session(String.t(), opts()) :: {:ok, Session.t()} | {:error, Error.t()}
  def get_or_create_session(id, opts \\ []), do: create(id, opts, :get_or_create)

  defp create(id, opts, mode) do
    id = id!(id)

    opts =
      Keyword.validate!(opts,
        ttl: nil,
        max_refs: nil,
        overflow: nil,
        tags: %{},
        owner: nil,
        instance: Snakeport,
        timeout: nil,
        placement: nil
      )

    limits = %{
      ttl_seconds: optional(opts[:ttl], &Options.pos_integer!(:ttl, &1)),
      max_refs: optional(opts[:max_refs], &Options.pos_integer!(:max_refs, &1)),
      overflow: optional(opts[:overflow], &Options.overflow!(:overflow, &1)),
      tags: tags!(opts[:tags])
    }

    owner = owner!(opts[:owner])
    placement = opts[:placement] && Snakeport.Cluster.placement!(:placement, opts[:placement])

    with {:ok, inst, timeout} <- instance(opts) do
      case Sessions.create(inst, id, owner, limits, mode, timeout, placement) do
        {:ok, info, lost} -> {:ok, session(inst, info, lost, System.system_time(:millisecond))}
        {:error, _} = error -> error
      end
    end
  end

  @doc """
  Returns the session `id` and counts as a use of it (its TTL starts again).

  Returns `{:ok, %Snakeport.SessionStore.Session{}}` or `{:error, :not_found}` (never
  created, deleted, or expired). Works for every kind of session (`:kind` says which).

  Options: `:instance`.
  """
  @spec get_session(String.t(), instance: atom()) ::
          {:ok, Session.t()} | {:error, :not_found | Error.t()}
  def get_session(id, opts \\ []) do
    id = id!(id)

    with {:ok, inst, timeout} <- instance(Keyword.validate!(opts, instance: Snakeport)) do
      at_home(inst, id, timeout, :get_session, [id, opts], {:error, :not_found}, fn ->
        case Sessions.touch(inst, id) do
          {:ok, info, lost, now} -> {:ok, session(inst, info, lost, now)}
          :not_found -> {:error, :not_found}
          {:error, _} = error -> error
        end
      end)
    end
  end

  @doc """
  Deletes the session `id`: it is forgotten and its worker releases every Python object it
  holds (and its state). Idempotent: returns `:ok` for an unknown id too.

  Options: `:instance`, `:timeout`.
  """
  @spec delete_session(String.t(), instance: atom(), timeout: timeout()) ::
          :ok | {:error, Error.t()}
  def delete_session(id, opts \\ []) do
    id = id!(id)

    with {:ok, inst, timeout} <-
           instance(Keyword.validate!(opts, instance: Snakeport, timeout: nil)),
         {:ok, _count} <- Sessions.release_session(inst, id, timeout) do
      :ok
    end
  end

  @doc """
  Reads `key` of the session's state.

  Returns `{:ok, value}`, or `{:error, :not_found}` when the key is not set or the
  session does not exist. Options: `:instance`.
  """
  @spec get_state(String.t(), term(), instance: atom()) ::
          {:ok, term()} | {:error, :not_found | Error.t()}
  def get_state(id, key, opts \\ []) do
    id = id!(id)

    with {:ok, inst, timeout} <- instance(Keyword.validate!(opts, instance: Snakeport)) do
      at_home(inst, id, timeout, :get_state, [id, key, opts], {:error, :not_found}, fn ->
        Sessions.get_state(inst, id, key)
      end)
    end
  end

  @doc """
  Sets `key` of the session's state to `value` (kept until the session ends).

  Returns `:ok`, or `{:error, :not_found}` when the session does not exist.
  Options: `:instance`.
  """
  @spec put_state(String.t(), term(), term(), instance: atom()) ::
          :ok | {:error, :not_found | Error.t()}
  def put_state(id, key, value, opts \\ []) do
    id = id!(id)

    with {:ok, inst, timeout} <- instance(Keyword.validate!(opts, instance: Snakeport)) do
      at_home(inst, id, timeout, :put_state, [id, key, value, opts], {:error, :not_found}, fn ->
        Sessions.put_state(inst, id, key, value)
      end)
    end
  end

  @doc """
  Removes `key` from the session's state (idempotent). Options: `:instance`.
  """
  @spec delete_state(String.t(), term(), instance: atom()) :: :ok | {:error, Error.t()}
  def delete_state(id, key, opts \\ []) do
    id = id!(id)

    with {:ok, inst, timeout} <- instance(Keyword.validate!(opts, instance: Snakeport)) do
      at_home(inst, id, timeout, :delete_state, [id, key, opts], :ok, fn ->
        Sessions.delete_state(inst, id, key)
      end)
    end
  end

  ## Helpers -------------------------------------------------------------------------------------

  # In a cluster, a session of another node is that node's: the same function runs there
  # (`gone` when it is down or disconnected); `here` runs for a session of this node, or
  # one that no node has.
  defp at_home(inst, id, timeout, fun, args, gone, here) do
    case Sessions.where(inst, id, timeout) do
      {:remote, node} -> Sessions.at(node, __MODULE__, fun, args, timeout, gone)
      _ -> here.()
    end
  end

  defp instance(opts) do
    name = Options.name!(:instance, opts[:instance])
    Client.admin(Keyword.take(opts, [:timeout]) ++ [instance: name], nil)
  end

  defp session(inst, info, lost, last_access) do
    %Session{
      id: info.id,
      instance: inst.name,
      kind: info.kind,
      ttl: info.ttl_seconds,
      max_refs: info.max_refs,
      overflow: info.overflow,
      tags: info.tags,
      created_at: info.created_at,
      last_access: last_access,
      worker: info.index,
      node: info.node,
      lost: lost
    }
  end

  defp id!(id) when is_binary(id) and id != "", do: id
  defp id!(other), do: Options.invalid!(:session_id, "a non-empty string", other)

  defp optional(nil, _check), do: nil
  defp optional(value, check), do: check.(value)

  defp tags!(tags) when is_map(tags), do: tags
  defp tags!(other), do: Options.invalid!(:tags, "a map", other)

  defp owner!(nil), do: nil
  defp owner!(pid) when is_pid(pid), do: pid
  defp owner!(other), do: Options.invalid!(:owner, "a pid", other)
end
