defmodule Snakeport.Ref do
  @moduledoc """
  A Python object held by a worker on behalf of a session.

  Results that cannot travel as plain data (class instances, functions, file objects, ...)
  come back as refs. Pass a ref to `Snakeport.method/4`, `Snakeport.get_attr/3`,
  `Snakeport.set_attr/4`, or inside the arguments of any call (also nested in lists, tuples
  and maps): the worker resolves it to its object.

  Fields:

    * `:session_id` - the session that holds the object; the ref is only valid there.
    * `:id` - the ref id, unique within the worker.
    * `:type` - the object's qualified Python type, e.g. `"collections.Counter"`.
    * `:worker` - the index of the worker that holds the object.
    * `:instance` - the Snakeport instance of that worker (`Snakeport` unless the instance
      was started with `:name`). Calls on a ref go to its instance; a ref used in a
      request to another instance fails with `:instance_mismatch`.
    * `:node` - the node of that worker (`nil` in a ref built by hand: this node).

  A ref is plain data: it can be sent to other processes, which may use it after adopting its
  session (see `Snakeport.SessionContext`), on this node or on any node of the cluster that
  runs its instance (see *Running on several nodes* in the README): a call on it goes to
  its worker on `:node`. It stays valid until it is released with
  `Snakeport.release_ref/2`, its session is released (last owner dead, explicit release,
  TTL), or the worker evicts or prunes it; a ref whose node is gone answers `:session_lost`.

  Inspecting a ref never talks to Python (the instance is shown unless it is `Snakeport`):

      iex> %Snakeport.Ref{session_id: "s-1", id: 12, type: "builtins.dict", worker: 0}
      #Snakeport.Ref<builtins.dict 12 @ "s-1">

      iex> %Snakeport.Ref{session_id: "s-1", id: 12, type: "builtins.dict", instance: MyApp.ML}
      #Snakeport.Ref<builtins.dict 12 @ "s-1" in MyApp.ML>
  """

  @enforce_keys [:session_id, :id, :type]
  defstruct [:session_id, :id, :type, worker: nil, instance: Snakeport, node: nil]

  @type t :: %__MODULE__{
          session_id: String.t(),
          id: pos_integer(),
          type: String.t(),
          worker: non_neg_integer() | nil,
          instance: atom(),
          node: node() | nil
        }

  @doc false
  # How a request names the session of this ref for Snakeport.Sessions.checkout/5: its id,
  # or {id, node} when it lives on another node.
  @spec session_key(t()) :: String.t() | {String.t(), node()}
  def session_key(%__MODULE__{session_id: id, node: node}) when node == nil or node == node(),
    do: id

  def session_key(%__MODULE__{session_id: id, node: node}), do: {id, node}

  defimpl Inspect do
    import Inspect.Algebra

    def inspect(%{session_id: session, id: id, type: type, instance: instance} = ref, opts) do
      concat([
        "#Snakeport.Ref<",
        to_string(type),
        " ",
        to_string(id),
        " @ ",
        to_doc(session, opts),
        if(instance == Snakeport, do: "", else: " in " <> Kernel.inspect(instance)),
        # The node shows when it is not this one.
        case Map.get(ref, :node) do
          node when node in [nil, node()] -> ""
          node -> " on " <> Kernel.inspect(node)
        end,
        ">"
      ])
    end
  end
end
