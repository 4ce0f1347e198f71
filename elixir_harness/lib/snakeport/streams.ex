defmodule Snakeport.Streams do
  @moduledoc false
  # Python iterators as lazy Elixir streams: Snakeport.stream/4, stream_method/4 and
  # to_stream/2 build a `Stream.resource/3` whose functions run in the process that
  # consumes the stream:
  #
  #   * start: the call (or method) is sent with `batch_size`/`batch_bytes`: the worker runs
  #     it, takes `iter()` of the result and answers its first batch, plus the iterator's ref
  #     when more may follow (the iterator lives in the session like any object);
  #   * next: the pending batch is emitted; then `iter_next` asks for the next one, only when
  #     the consumer wants more items;
  #   * after (the stream is done, halted by Enum.take/2 and the like, or the consumer
  #     raised): `iter_close` closes the iterator (a generator's `finally` runs) and releases
  #     its ref, unless the worker already did (an exhausted iterator).
  #
  # A consumer that dies never runs `after`: a guard process (under the instance's
  # Task.Supervisor, started only for a stream that outlives its first batch) monitors it
  # and sends `iter_close` then. The session's release closes the iterator as well (the
  # worker closes every generator it drops).
  #
  # Errors raise %Snakeport.Error{} in the consumer (a stream has no {:error, _} to return);
  # the items pulled before an exception of the iterator are emitted first.

  alias Snakeport.{Client, Defaults, Error, Instance, Options, Protocol, Ref, Sessions}

  @call_keys [:kwargs, :session, :timeout, :result, :instance, :placement]
  @next_keys [:session, :timeout, :result, :instance]

  @doc false
  # A stream of the items of `module.function(*args)` (start = {:call, module, function,
  # args}) or `ref.name(*args)` ({:method, ref, name, args}).
  @spec new(tuple(), keyword()) :: Enumerable.t()
  def new(start, opts) when is_list(opts) do
    {batch, opts} = batch!(opts)
    Keyword.validate!(opts, @call_keys)

    Stream.resource(
      fn -> open(start, opts, batch) end,
      &next/1,
      &close/1
    )
  end

  def new(_start, other),
    do: raise(ArgumentError, "expected a keyword list of options, got: #{inspect(other)}")

  defp batch!(opts) do
    {size, opts} = Keyword.pop(opts, :batch_size, Defaults.stream_batch_size())
    {bytes, opts} = Keyword.pop(opts, :batch_bytes, Defaults.stream_batch_bytes())
    size = Options.pos_integer!(:batch_size, size)
    bytes = Options.pos_integer!(:batch_bytes, bytes)
    {%{batch_size: size, batch_bytes: bytes}, opts}
  end

  defp open(start, opts, batch) do
    reply =
      case start do
        {:call, module, function, args} -> Client.call(module, function, args, opts, batch)
        {:method, ref, name, args} -> Client.method(ref, name, args, opts, batch)
      end

    case Protocol.batch(reply) do
      {:ok, %{ref: ref} = first} ->
        # Later requests go to the iterator's session and instance (as a method would).
        next_opts = Keyword.take(opts, @next_keys)
        guard = if match?(%Ref{}, ref), do: guard(ref, opts[:timeout])
        Map.merge(first, %{opts: next_opts, batch: batch, guard: guard})

      {:error, %Error{} = error} ->
        raise error
    end
  end

  defp next(%{items: [_ | _] = items} = state), do: {items, %{state | items: []}}
  defp next(%{error: %Error{} = error}), do: raise(error)
  defp next(%{done: true} = state), do: {:halt, state}

  defp next(%{ref: ref} = state) do
    case Protocol.batch(Client.iter_next(ref, state.opts, state.batch)) do
      {:ok, batch} -> next(%{state | items: batch.items, done: batch.done, error: batch.error})
      {:error, %Error{} = error} -> raise error
    end
  end

  defp close(state) do
    if not state.done and match?(%Ref{}, state.ref) do
      with {:ok, inst} <- Instance.fetch(state.ref.instance) do
        Sessions.close_iter(inst, state.ref, timeout(inst, state.opts[:timeout]))
      end
    end

    if state.guard, do: send(state.guard, :stop)
    :ok
  end

  defp timeout(inst, nil), do: inst.call_timeout
  defp timeout(_inst, timeout), do: timeout

  ## The guard: iter_close when the consumer dies --------------------------------------------

  defp guard(%Ref{} = ref, timeout) do
    consumer = self()

    with {:ok, inst} <- Instance.fetch(ref.instance),
         {:ok, pid} <-
           Task.Supervisor.start_child(inst.tool_supervisor, __MODULE__, :guard, [
             ref,
             consumer,
             timeout(inst, timeout)
           ]) do
      pid
    else
      _ -> nil
    end
  catch
    :exit, _ -> nil
  end

  @doc false
  # The guard process of one stream: closes its iterator if the consumer dies before the
  # stream's `after` ran (which stops the guard with :stop).
  @spec guard(Ref.t(), pid(), timeout()) :: :ok
  def guard(ref, consumer, timeout) do
    mref = Process.monitor(consumer)

    receive do
      :stop ->
        :ok

      {:DOWN, ^mref, :process, _, _} ->
        with {:ok, inst} <- Instance.fetch(ref.instance),
             do: Sessions.close_iter(inst, ref, timeout)

        :ok
    end
  end
end
