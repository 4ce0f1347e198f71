defmodule Snakeport.Tools do
  @moduledoc false
  # The Elixir tools that Python code calls during a call
  # (`snakeport.context().call_elixir_tool(name, **kwargs)`): the registry of an instance's
  # tools, the built-in session-state tools, and the runner of one tool call.
  #
  # Registry: a public ETS table per instance, `{name, fun}` (owned by Snakeport.Instance,
  # filled from the `:tools` start option; Snakeport.register_tool/3 adds to it). A tool is
  # a function of arity 1 (the kwargs map, string keys) or 2 (kwargs, context map).
  #
  # The path of one tool call: the worker's frame `{tool_call, CallId, RequestId, Session,
  # Name, Kwargs}` reaches the port owner (Snakeport.Worker), which looks up the caller of
  # `RequestId` in its pending table (the process waiting for that call's reply) and
  # starts a runner under the instance's Task.Supervisor (never running the tool itself:
  # the port owner must stay free to route frames, the nested call's reply among them).
  # The runner:
  #
  #   * monitors the caller: if it dies, the tool is killed, the Python call is cancelled
  #     (which ends its wait) and nothing is answered;
  #   * runs the tool in a linked process (with the call's session as its current
  #     SessionContext, so that Snakeport calls it makes run in the same session), bounded
  #     by the instance's `:tool_timeout` (killed when it passes);
  #   * writes `{tool_reply, CallId, ok, Value}` or `{tool_reply, CallId, error, Map}` to
  #     the port itself.
  #
  # When the Python side stops waiting (its call was cancelled, or its own deadline
  # passed) it sends `{tool_cancel, CallId}`, and the port owner kills the runner (hence
  # the tool).

  alias Snakeport.{Error, Instance, Options, Protocol, SessionContext, Sessions, Worker}

  @builtins %{
    "get_session_state" => :get_session_state,
    "set_session_state" => :set_session_state
  }

  @type tool :: (map() -> term()) | (map(), map() -> term())

  ## Registry ---------------------------------------------------------------------------------

  @doc false
  # The names of the built-in tools.
  def builtins, do: Map.keys(@builtins)

  @doc false
  # Creates an instance's tool table with the validated `tools`.
  @spec new_table(atom(), [{String.t(), tool()}]) :: :ok
  def new_table(name, tools) do
    :ets.new(name, [:named_table, :public, :set, read_concurrency: true])
    :ets.insert(name, tools)
    :ok
  end

  @doc false
  # Validates the `:tools` start option: a keyword list or map of name => function of
  # arity 1 or 2. Returns `[{name_string, fun}]`.
  @spec validate!(term()) :: [{String.t(), tool()}]
  def validate!(tools) when is_list(tools) or is_map(tools) do
    Enum.map(tools, fn
      {name, fun} ->
        name = name!(name)
        {name, fun!(name, fun)}

      other ->
        Options.invalid!(:tools, "a keyword list or map of name => function", other)
    end)
  end

  def validate!(other),
    do: Options.invalid!(:tools, "a keyword list or map of name => function", other)

  @doc false
  # A tool's name as a string; the built-in names are reserved.
  @spec name!(term()) :: String.t()
  def name!(name) when (is_atom(name) and name not in [nil, true, false]) or is_binary(name) do
    name = to_string(name)

    cond do
      name == "" ->
        Options.invalid!(:tools, "names that are non-empty atoms or strings", name)

      Map.has_key?(@builtins, name) ->
        raise ArgumentError,
              "the tool name #{inspect(name)} is reserved for the built-in session-state " <>
                "tool; choose another name"

      true ->
        name
    end
  end

  def name!(other), do: Options.invalid!(:tools, "names that are atoms or strings", other)

  defp fun!(_name, fun) when is_function(fun, 1) or is_function(fun, 2), do: fun

  defp fun!(name, other) do
    raise ArgumentError,
          "expected the tool #{inspect(name)} to be a function of arity 1 (kwargs) or 2 " <>
            "(kwargs, context), got: #{inspect(other)}"
  end

  @doc false
  # Registers (or replaces) a tool of a running instance.
  @spec register(Instance.t(), term(), tool()) :: :ok
  def register(inst, name, fun) do
    name = name!(name)
    :ets.insert(inst.tools, {name, fun!(name, fun)})
    :ok
  end

  @doc false
  @spec unregister(Instance.t(), term()) :: :ok
  def unregister(inst, name) do
    :ets.delete(inst.tools, to_string(name))
    :ok
  end

  @doc false
  # The registered tools' names (the built-ins first).
  @spec names(Instance.t()) :: [String.t()]
  def names(inst) do
    registered = inst.tools |> :ets.select([{{:"$1", :_}, [], [:"$1"]}]) |> Enum.sort()
    Enum.sort(builtins()) ++ registered
  end

  defp fetch(inst, name) do
    case @builtins do
      %{^name => builtin} ->
        {:ok, builtin}

      %{} ->
        case :ets.lookup(inst.tools, name) do
          [{^name, fun}] -> {:ok, fun}
          [] -> :error
        end
    end
  end

  ## Runner -----------------------------------------------------------------------------------

  @doc false
  # Starts the runner of one tool call (called by the port owner). `call` is the decoded
  # tool_call (Protocol.decode_tool_call/3); `caller` the process waiting for the reply of
  # the Python call that asks for the tool (nil when nobody waits any more).
  @spec start(atom(), Worker.entry(), map(), pid() | nil) :: {:ok, pid()} | {:error, term()}
  def start(supervisor, entry, call, caller) do
    Task.Supervisor.start_child(supervisor, __MODULE__, :run, [entry, call, caller])
  catch
    :exit, reason -> {:error, reason}
  end

  @doc false
  # The runner (see the module comment). Writes exactly one tool_reply unless the caller
  # died (then the Python call is cancelled instead).
  @spec run(Worker.entry(), map(), pid() | nil) :: :ok
  def run(entry, call, caller) do
    result =
      case Instance.fetch(entry.instance) do
        {:ok, inst} ->
          case fetch(inst, call.name) do
            {:ok, tool} ->
              supervise(inst, entry, call, caller, tool)

            :error ->
              {:error, :tool_not_found,
               "no Elixir tool #{inspect(call.name)} is registered in the Snakeport instance " <>
                 "#{inspect(inst.name)} (known: #{Enum.join(names(inst), ", ")}); register " <>
                 "it with the start option tools: [...] or Snakeport.register_tool/3",
               %{tool: call.name}}
          end

        {:error, %Error{} = error} ->
          {:error, :tool_error, error.message, %{}}
      end

    case result do
      :caller_exited -> :ok
      result -> answer(entry, call.call_id, result)
    end
  end

  defp supervise(_inst, _entry, _call, nil, _tool), do: caller_gone()

  defp supervise(inst, entry, call, caller, tool) do
    caller_ref = Process.monitor(caller)
    Process.flag(:trap_exit, true)
    parent = self()

    context = %{
      instance: inst.name,
      session_id: call.session,
      request_id: call.request_id,
      caller: caller,
      worker: entry.index
    }

    pid =
      spawn_link(fn ->
        SessionContext.put_current(
          SessionContext.create(session_id: call.session, instance: inst.name)
        )

        send(parent, {:tool_result, self(), apply_tool(inst, tool, call.kwargs, context)})
      end)

    receive do
      {:tool_result, ^pid, result} ->
        result

      {:EXIT, ^pid, reason} ->
        {:error, :tool_error, "the tool exited: #{inspect(reason, limit: 20)}", %{}}

      {:DOWN, ^caller_ref, :process, _, _} ->
        Process.exit(pid, :kill)
        # Nobody waits for the call any more: stop it (which ends its wait for us).
        Worker.cancel(entry, call.request_id)
        :caller_exited
    after
      inst.tool_timeout ->
        Process.exit(pid, :kill)

        {:error, :timeout,
         "the tool #{inspect(call.name)} did not return within #{inst.tool_timeout} ms " <>
           "(option :tool_timeout); it was killed", %{timeout: inst.tool_timeout}}
    end
  end

  defp caller_gone do
    {:error, :caller_exited, "the call that asked for the tool is no longer waited for", %{}}
  end

  defp apply_tool(inst, builtin, kwargs, context) when is_atom(builtin),
    do: builtin(inst, builtin, kwargs, context)

  defp apply_tool(_inst, tool, kwargs, context) do
    value = if is_function(tool, 2), do: tool.(kwargs, context), else: tool.(kwargs)

    case value do
      {:ok, value} -> {:ok, value}
      {:error, %Error{} = error} -> {:error, :tool_error, Exception.message(error), %{}}
      {:error, reason} -> {:error, :tool_error, inspect(reason, limit: 50), %{}}
      value -> {:ok, value}
    end
  rescue
    e ->
      {:error, :tool_error, Exception.message(e),
       %{kind: "error", exception: inspect(e.__struct__)}}
  catch
    kind, reason ->
      {:error, :tool_error, "#{kind}: #{inspect(reason, limit: 50)}", %{kind: to_string(kind)}}
  end

  # get_session_state(key: K, default: D) / set_session_state(key: K, value: V): the
  # session's state in the harness (Snakeport.SessionStore.get_state/3, put_state/4).
  defp builtin(inst, :get_session_state, %{"key" => key} = kwargs, context) do
    case Sessions.get_state(inst, context.session_id, key) do
      {:ok, value} -> {:ok, value}
      {:error, :not_found} -> {:ok, Map.get(kwargs, "default")}
      {:error, %Error{} = error} -> {:error, :tool_error, error.message, %{}}
    end
  end

  defp builtin(inst, :set_session_state, %{"key" => key, "value" => value}, context) do
    case Sessions.put_state(inst, context.session_id, key, value) do
      :ok ->
        {:ok, nil}

      {:error, :not_found} ->
        {:error, :tool_error, "session #{inspect(context.session_id)} is gone", %{}}

      {:error, %Error{} = error} ->
        {:error, :tool_error, error.message, %{}}
    end
  end

  defp builtin(_inst, name, kwargs, _context) do
    needed = if name == :get_session_state, do: "key (and default)", else: "key and value"

    {:error, :tool_error,
     "#{name} takes the keyword arguments #{needed}, got: #{inspect(Map.keys(kwargs))}", %{}}
  end

  @doc false
  # Writes the tool_reply of `call_id` to the worker's port.
  @spec answer(Worker.entry(), pos_integer(), {:ok, term()} | {:error, atom(), String.t(), map()}) ::
          :ok
  def answer(entry, call_id, result) do
    frame =
      case result do
        {:ok, value} ->
          case to_wire(value, entry.instance) do
            {:ok, wire, _, []} ->
              Protocol.tool_reply(call_id, {:ok, wire})

            {:ok, wire, _, blobs} ->
              Protocol.tool_reply(call_id, {:ok, wire, blobs})

            {:error, error} ->
              Protocol.tool_reply(call_id, {:error, :bad_result, error.message, %{}})
          end

        error ->
          Protocol.tool_reply(call_id, error)
      end

    size = IO.iodata_length(frame)

    frame =
      if size > entry.max_frame_bytes do
        message =
          "the tool's value is #{size} bytes, above the worker's frame limit of " <>
            "#{entry.max_frame_bytes} bytes"

        Protocol.tool_reply(call_id, {:error, :bad_result, message, %{}})
      else
        frame
      end

    Worker.send_frame(entry, frame)
  end

  # A malformed Snakeport struct in the value (an array whose data does not fit its shape)
  # is the tool's error, not the runner's crash.
  defp to_wire(value, instance) do
    Protocol.to_wire(value, instance)
  rescue
    e in ArgumentError ->
      {:error, %{message: "the tool's value cannot be sent: " <> Exception.message(e)}}
  end
end
