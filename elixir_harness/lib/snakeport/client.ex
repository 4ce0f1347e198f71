defmodule Snakeport.Client do
  @moduledoc false
  # The call path, run in the caller's process: option parsing, session checkout, one
  # request through Snakeport.Worker (no process hop on the way out), telemetry, decoding.

  alias Snakeport.{Error, Protocol, Ref, Sessions, Telemetry, Worker}

  @config_key {Snakeport, :config}

  @type parsed :: %{
          kwargs: map(),
          session: String.t() | Snakeport.SessionContext.t() | nil,
          timeout: timeout(),
          req_opts: map()
        }

  @doc false
  @spec config() :: map()
  def config, do: :persistent_term.get(@config_key, %{call_timeout: 60_000, pool_size: 0})

  @doc false
  def put_config(config) do
    value = %{call_timeout: config.call_timeout, pool_size: config.pool_size}
    # persistent_term writes are expensive for the whole VM: only write on change.
    if :persistent_term.get(@config_key, nil) != value,
      do: :persistent_term.put(@config_key, value)

    :ok
  end

  @doc false
  # Parses the options of call/method/get_attr/set_attr. `allowed` lists the valid keys.
  @spec parse_opts(keyword(), [atom()]) :: parsed()
  def parse_opts([], _allowed),
    do: %{kwargs: %{}, session: nil, timeout: config().call_timeout, req_opts: %{}}

  def parse_opts(opts, allowed) when is_list(opts) do
    defaults = [kwargs: %{}, session: nil, timeout: nil, result: :auto]
    opts = Keyword.validate!(opts, Keyword.take(defaults, allowed))

    %{
      kwargs: kwargs!(Keyword.get(opts, :kwargs, %{})),
      session: session!(opts[:session]),
      timeout: timeout!(opts[:timeout]),
      req_opts: result!(Keyword.get(opts, :result, :auto))
    }
  end

  def parse_opts(other, _allowed),
    do: raise(ArgumentError, "expected a keyword list of options, got: #{inspect(other)}")

  defp kwargs!(map) when is_map(map) and not is_struct(map), do: map

  defp kwargs!(list) when is_list(list) do
    if Keyword.keyword?(list),
      do: Map.new(list),
      else: Snakeport.Options.invalid!(:kwargs, "a keyword list or a map", list)
  end

  defp kwargs!(other), do: Snakeport.Options.invalid!(:kwargs, "a keyword list or a map", other)

  defp session!(nil), do: nil
  defp session!(id) when is_binary(id) and id != "", do: id
  defp session!(%Snakeport.SessionContext{} = ctx), do: ctx

  defp session!(other),
    do:
      Snakeport.Options.invalid!(
        :session,
        "a session id (string) or a %Snakeport.SessionContext{}",
        other
      )

  defp timeout!(nil), do: config().call_timeout
  defp timeout!(:infinity), do: :infinity
  defp timeout!(t) when is_integer(t) and t >= 0, do: t

  defp timeout!(other),
    do: Snakeport.Options.invalid!(:timeout, "a non-negative integer or :infinity", other)

  defp result!(:auto), do: %{}
  defp result!(mode) when mode in [:ref, :value], do: %{result: mode}
  defp result!(other), do: Snakeport.Options.invalid!(:result, ":auto, :ref or :value", other)

  @doc false
  # Runs one session-bound request. `target` is the ref the operation is applied to (or
  # nil); `ref_session` the session of the first ref in the arguments (or nil); `build`
  # gets the request id and the session id and returns the request tuple.
  @spec run(
          map(),
          parsed(),
          Ref.t() | nil,
          String.t() | nil,
          (non_neg_integer(), String.t() -> tuple())
        ) ::
          {:ok, term()} | {:error, Error.t()}
  def run(meta, parsed, target, ref_session, build) do
    ref_session = if target, do: target.session_id, else: ref_session

    with {:ok, session} <- Sessions.checkout(parsed.session, ref_session, parsed.timeout),
         :ok <- check_target(target, session) do
      # Without a handler for the call events (and without :telemetry) no clock is read and
      # no measurement or metadata map is built.
      # A call without refs in the process's own auto-session may move to a new one.
      renewable = ref_session == nil

      if Telemetry.listening?([:snakeport, :call]) do
        run_observed(meta, parsed, session, build, renewable)
      else
        exchange(parsed, session, build, renewable)
      end
    end
  end

  defp run_observed(meta, parsed, session, build, renewable) do
    meta = Map.merge(meta, %{session_id: session.id, worker: session.index})
    start = System.monotonic_time()

    Telemetry.execute(
      [:snakeport, :call, :start],
      %{system_time: System.system_time(), monotonic_time: start},
      meta
    )

    result = exchange(parsed, session, build, renewable)
    stop = System.monotonic_time()

    case result do
      {:ok, _} ->
        Telemetry.execute(
          [:snakeport, :call, :stop],
          %{duration: stop - start, monotonic_time: stop},
          meta
        )

      {:error, error} ->
        Telemetry.execute(
          [:snakeport, :call, :exception],
          %{duration: stop - start, monotonic_time: stop},
          Map.merge(meta, %{kind: :error, reason: error})
        )
    end

    result
  end

  defp exchange(parsed, session, build, renewable) do
    case Worker.request(
           session.worker,
           &Protocol.encode(build.(&1, session.id)),
           parsed.timeout
         ) do
      {:ok, frame} ->
        case Protocol.decode_reply(frame, session.index) do
          {:error, %Error{reason: :session_not_found}} = error ->
            # The session is not open in the worker: re-open it there if the harness
            # still has it; the error goes to the caller either way.
            Sessions.reopen(session.id)
            error

          decoded ->
            decoded
        end

      # The request could not be written: the auto-session's worker is gone, and the store
      # has not marked the session lost yet. Nothing ran: retry once in a new auto-session.
      {:error, reason} when reason in [:noproc, :port_closed] and renewable ->
        if Sessions.own_auto?(session.id) do
          case Sessions.renew_auto(session.id, parsed.timeout) do
            {:ok, renewed} -> exchange(parsed, renewed, build, false)
            error -> error
          end
        else
          {:error, transport_error(reason, session, parsed.timeout)}
        end

      {:error, reason} ->
        {:error, transport_error(reason, session, parsed.timeout)}
    end
  end

  defp check_target(nil, _session), do: :ok
  defp check_target(%Ref{session_id: id}, %{id: id}), do: :ok

  defp check_target(%Ref{} = ref, session) do
    {:error,
     Error.new(
       :session_mismatch,
       "#{inspect(ref)} belongs to session #{inspect(ref.session_id)}, but this call runs in " <>
         "session #{inspect(session.id)}. Refs are only valid in their own session: adopt it " <>
         "with SessionContext.with_session([session_id: #{inspect(ref.session_id)}], fun) " <>
         "or pass session: #{inspect(ref.session_id)}.",
       %{ref_session: ref.session_id, session: session.id}
     )}
  end

  @doc false
  # A request that is not about a session (stats): nothing is lost, a dead worker exited.
  @spec worker_request(Worker.entry(), (non_neg_integer() -> tuple()), timeout()) ::
          {:ok, term()} | {:error, Error.t()}
  def worker_request(entry, build, timeout) do
    case Worker.request(entry, &Protocol.encode(build.(&1)), timeout) do
      {:ok, frame} -> Protocol.decode_reply(frame, entry.index)
      {:error, reason} -> {:error, transport_error(reason, nil, timeout)}
    end
  end

  @doc false
  @spec transport_error(term(), Sessions.info() | nil, timeout()) :: Error.t()
  def transport_error(:noproc, %{} = session, _timeout), do: Sessions.lost_error(session)
  def transport_error({:down, :noproc}, %{} = session, _timeout), do: Sessions.lost_error(session)

  def transport_error(:timeout, session, timeout) do
    Error.new(
      :timeout,
      "the Python call did not answer within #{timeout} ms; the worker was asked to cancel it",
      %{timeout: timeout, worker: session && session.index}
    )
  end

  def transport_error({:frame_too_large, size, limit}, _session, _timeout) do
    Error.new(
      :frame_too_large,
      "the request is #{size} bytes, above the worker's frame limit of #{limit} bytes " <>
        "(option :max_frame_bytes)",
      %{size: size, limit: limit}
    )
  end

  def transport_error(reason, session, _timeout) do
    {why, details} =
      case reason do
        {:down, {:shutdown, {:python_exited, status}}} ->
          {"the Python process exited with status #{status}", %{exit_status: status}}

        {:down, other} ->
          {"the worker stopped (#{inspect(other)})", %{reason: other}}

        other ->
          {"the worker is not running (#{inspect(other)})", %{reason: other}}
      end

    Error.new(
      :worker_exited,
      "#{why} while this request was in flight; the worker is being restarted" <>
        if(session, do: " and session #{inspect(session.id)} is lost", else: ""),
      Map.put(details, :worker, session && session.index)
    )
  end
end
