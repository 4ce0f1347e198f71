defmodule Snakeport.Protocol do
  @moduledoc false
  # The wire contract of docs/PROTOCOL.md (version 1), and the only module that knows the
  # shape of a frame: one builder per request and its encoding, reply and event decoding,
  # the shapes of the ok values (session info, release counts, stats). The translation
  # between wire terms and Elixir values (refs, sets, arrays, dates, ...; blobs) is
  # Snakeport.Values'; to_wire/2 and from_wire/5 here are its entry points.
  #
  # Decoding rule: every frame from the worker is decoded with `binary_to_term(_, [:safe,
  # :used])`, so worker output can never create an atom, and a frame is exactly one term:
  # bytes after it make the frame malformed (binary_to_term alone would ignore them, and a
  # frame whose header disagrees with its elements would decode to a wrong value). Every atom the protocol itself uses is
  # listed in @atoms below: this module is loaded when the application starts, which puts
  # them in the atom table before the first frame arrives. It must include every atom of
  # docs/PROTOCOL.md "Atoms the worker emits" (test/snakeport/protocol_atoms_test.exs).

  alias Snakeport.{Error, Ref}

  @version 1

  @atoms [
    # envelopes
    :snakeport_ready,
    :reply,
    :event,
    :ok,
    :error,
    :pong,
    # operations
    :call,
    :method,
    :getattr,
    :setattr,
    :open_session,
    :release_ref,
    :release_session,
    :session_info,
    :stats,
    :ping,
    :cancel,
    :shutdown,
    :module,
    :eval,
    :expire_session,
    :iter_next,
    :iter_close,
    # stream options and batches
    :batch_size,
    :batch_bytes,
    :items,
    :done,
    # log events (Python's output): keys and sources
    :log,
    :level,
    :source,
    :logger,
    :request_id,
    :dropped,
    :logging,
    :warnings,
    :stdout,
    :stderr,
    # the worker's requests (Python calling Elixir tools) and their answers
    :tool_call,
    :tool_cancel,
    :tool_reply,
    # expire_session reply keys
    :expired,
    :idle_ms,
    # request options and session options
    :result,
    :auto,
    :ref,
    :value,
    :max_refs,
    :ttl_seconds,
    :tags,
    :overflow,
    :evict_lru,
    # ready frame info
    :pid,
    :python,
    :snakeport,
    :max_frame_bytes,
    :threads,
    :default_max_refs,
    :default_ttl_seconds,
    # error map and error reasons
    :reason,
    :message,
    :type,
    :traceback,
    :details,
    :python_error,
    :ref_not_found,
    :ref_released,
    :session_mismatch,
    :session_not_found,
    :max_refs_exceeded,
    :bad_request,
    :frame_too_large,
    :decode_error,
    :not_encodable,
    :cancelled,
    :import_error,
    :attribute_error,
    :shutting_down,
    :not_allowed,
    # error details
    :cause,
    :released,
    :evicted,
    :ttl,
    :session_released,
    :limit,
    :refs,
    :size,
    :ref_id,
    :op,
    :id,
    :session,
    # events
    :refs_pruned,
    :refs_evicted,
    :warning,
    :protocol_error,
    :count,
    :ref_ids,
    # warning event context
    :running,
    # session info and stats
    :created_at,
    :last_access,
    :sessions,
    :rss_bytes,
    :uptime_ms,
    :in_flight,
    :requests,
    :fast_path,
    # values
    :infinity,
    :neg_infinity,
    :nan,
    nil,
    true,
    false,
    :"$snakeport_ref",
    :"$snakeport_bytes",
    :"$snakeport_set",
    :"$snakeport_array",
    :"$snakeport_blob",
    :"$snakeport_date",
    :"$snakeport_time",
    :"$snakeport_datetime",
    :"$snakeport_timedelta",
    :"$snakeport_decimal",
    :"$snakeport_uuid",
    :"$snakeport_range",
    :"$snakeport_dataframe",
    :"$snakeport_series",
    :"$snakeport_index",
    :"$snakeport_ext",
    :"$snakeport_arrow",
    # array element kinds (Nx's notation) and the special Decimal coefficients
    :s,
    :u,
    :f,
    :c,
    :bf,
    :NaN,
    :sNaN,
    :inf
  ]

  # Requests whose external size is below this are encoded in one term_to_binary/1; larger
  # ones are built as iodata in which big binary arguments are referenced, not copied.
  @splice_threshold 65_536

  @doc false
  def version, do: @version

  @doc false
  def atoms, do: @atoms

  ## Requests ------------------------------------------------------------------------------
  #
  # One builder per request of docs/PROTOCOL.md. A request is built without its id (and
  # session): encode/3 fills them in when it is sent, since the id comes from the worker's
  # counter at that moment and a call retried in a new auto-session is sent again with the
  # new session id. Nothing outside this module writes a request tuple.

  @typedoc "A request of docs/PROTOCOL.md whose id (and session) encode/3 fills in."
  @type request :: tuple()

  @doc false
  # `module.function(*args, **kwargs)`.
  @spec call(String.t(), String.t(), list(), map(), map()) :: request()
  def call(module, function, args, kwargs, opts),
    do: {:call, nil, nil, module, function, args, kwargs, opts}

  @doc false
  # `getattr(obj, name)(*args, **kwargs)` on the object of the wire ref `ref`.
  @spec method(tuple(), String.t(), list(), map(), map()) :: request()
  def method(ref, name, args, kwargs, opts),
    do: {:method, nil, nil, ref, name, args, kwargs, opts}

  @doc false
  # An attribute of a wire ref's object, or of a module (target module_target/1).
  @spec getattr(tuple(), String.t(), map()) :: request()
  def getattr(target, name, opts), do: {:getattr, nil, nil, target, name, opts}

  @doc false
  # The getattr target naming a module.
  @spec module_target(String.t()) :: tuple()
  def module_target(module), do: {:module, module}

  @doc false
  # `setattr(obj, name, value)`.
  @spec setattr(tuple(), String.t(), term(), map()) :: request()
  def setattr(ref, name, value, opts), do: {:setattr, nil, nil, ref, name, value, opts}

  @doc false
  # Creates the session (or updates the limits it names). `opts` holds only the limits the
  # caller chose (max_refs, ttl_seconds, tags): the worker's defaults fill in the rest.
  @spec open_session(map()) :: request()
  def open_session(opts), do: {:open_session, nil, nil, opts}

  @doc false
  # Runs Python source with variables (a map of binary names to wire terms) and answers the
  # value of its last expression.
  @spec eval(String.t(), map(), map()) :: request()
  def eval(code, bindings, opts), do: {:eval, nil, nil, code, bindings, opts}

  @doc false
  # The next batch of the stream whose iterator is the wire ref `ref`; `opts` holds
  # batch_size, batch_bytes and result.
  @spec iter_next(tuple(), map()) :: request()
  def iter_next(ref, opts), do: {:iter_next, nil, nil, ref, opts}

  @doc false
  # Ends a stream early: closes its iterator (a generator's finally runs) and releases it.
  @spec iter_close(tuple()) :: request()
  def iter_close(ref), do: {:iter_close, nil, nil, ref}

  @doc false
  # Releases the session if the worker saw no activity of it for `idle_ms` (and none runs).
  @spec expire_session(non_neg_integer()) :: request()
  def expire_session(idle_ms), do: {:expire_session, nil, nil, idle_ms}

  @doc false
  @spec release_ref(tuple()) :: request()
  def release_ref(ref), do: {:release_ref, nil, nil, ref}

  @doc false
  @spec release_session() :: request()
  def release_session, do: {:release_session, nil, nil}

  @doc false
  @spec session_info() :: request()
  def session_info, do: {:session_info, nil, nil}

  @doc false
  @spec stats() :: request()
  def stats, do: {:stats, nil}

  @doc false
  @spec ping() :: request()
  def ping, do: {:ping, nil}

  @doc false
  # Interrupts the request `target`.
  @spec cancel(non_neg_integer()) :: request()
  def cancel(target), do: {:cancel, nil, target}

  @doc false
  @spec shutdown() :: request()
  def shutdown, do: {:shutdown, nil}

  @doc false
  # The wire term of a ref (`{'$snakeport_ref', Session, RefId, Type}`).
  @spec ref(Ref.t()) :: tuple()
  def ref(%Ref{session_id: s, id: id, type: type}), do: {:"$snakeport_ref", s, id, type}

  @doc false
  # `request` followed by `blobs` (the data of large arrays, from to_wire/2): the frame is
  # the request's term, then those bytes (docs/PROTOCOL.md, "Blobs").
  @spec with_blobs(request(), [binary()]) :: request() | {:blobs, request(), [binary()]}
  def with_blobs(request, []), do: request
  def with_blobs(request, blobs), do: {:blobs, request, blobs}

  @doc false
  # Encodes `request` with the request id `id` and, for a request about a session, the
  # session id. Returns a binary for ordinary requests and iodata (sharing the caller's
  # big binaries) when arguments are large or blobs follow the term.
  @spec encode(request() | {:blobs, request(), [binary()]}, non_neg_integer(), String.t() | nil) ::
          iodata()
  def encode({:blobs, request, blobs}, id, session), do: [encode(request, id, session) | blobs]

  def encode(request, id, nil), do: encode_term(:erlang.setelement(2, request, id))

  # Descending literal indexes: the compiler copies the tuple once.
  def encode(request, id, session),
    do: encode_term(:erlang.setelement(2, :erlang.setelement(3, request, session), id))

  defp encode_term(request) do
    if :erlang.external_size(request) < @splice_threshold do
      :erlang.term_to_binary(request)
    else
      [131 | encode_request(request)]
    end
  end

  # Top level tuple: walk one level into the argument list, the kwargs map and values.
  defp encode_request(tuple) do
    elements = Tuple.to_list(tuple)
    [tuple_header(tuple_size(tuple)) | Enum.map(elements, &encode_container/1)]
  end

  defp encode_container(list) when is_list(list) and list != [] do
    case proper_length(list, 0) do
      nil -> ext(list)
      n -> [<<108, n::32>>, Enum.map(list, &encode_leaf/1), 106]
    end
  end

  defp encode_container(map) when is_map(map) and not is_struct(map) do
    [<<116, map_size(map)::32>> | Enum.map(map, fn {k, v} -> [ext(k), encode_leaf(v)] end)]
  end

  defp encode_container(other), do: encode_leaf(other)

  defp encode_leaf(bin) when is_binary(bin) and byte_size(bin) >= @splice_threshold,
    do: [<<109, byte_size(bin)::32>>, bin]

  defp encode_leaf({:"$snakeport_bytes", bin})
       when is_binary(bin) and byte_size(bin) >= @splice_threshold,
       do: [tuple_header(2), ext(:"$snakeport_bytes"), <<109, byte_size(bin)::32>>, bin]

  defp encode_leaf(other), do: ext(other)

  defp tuple_header(n) when n < 256, do: <<104, n>>
  defp tuple_header(n), do: <<105, n::32>>

  # The external format of a term without its version byte (a sub-binary: no copy).
  defp ext(term) do
    bin = :erlang.term_to_binary(term)
    binary_part(bin, 1, byte_size(bin) - 1)
  end

  defp proper_length([], n), do: n
  defp proper_length([_ | tail], n), do: proper_length(tail, n + 1)
  defp proper_length(_improper, _n), do: nil

  ## Frames from the worker ----------------------------------------------------------------

  @doc false
  # Classifies a frame by its first bytes without decoding it: `{:reply, id}` or `:event`.
  # The worker writes atoms as SMALL_ATOM_UTF8_EXT (119); the other atom encodings are
  # accepted too. A frame whose first bytes are not such a header is decoded whole (safely):
  # `{:unexpected, reason, message}` when it is neither a reply nor an event.
  @spec frame_kind(binary()) ::
          {:reply, non_neg_integer()}
          | :event
          | :tool_call
          | :tool_cancel
          | {:unexpected, atom(), String.t()}
  def frame_kind(<<131, 104, 4, 119, 5, "reply", rest::binary>> = f), do: reply_id(rest, f)
  def frame_kind(<<131, 104, 4, 118, 0, 5, "reply", rest::binary>> = f), do: reply_id(rest, f)
  def frame_kind(<<131, 104, 4, 115, 5, "reply", rest::binary>> = f), do: reply_id(rest, f)
  def frame_kind(<<131, 104, 4, 100, 0, 5, "reply", rest::binary>> = f), do: reply_id(rest, f)
  def frame_kind(<<131, 104, 4, 119, 5, "event", _::binary>>), do: :event
  def frame_kind(<<131, 104, 4, 118, 0, 5, "event", _::binary>>), do: :event
  def frame_kind(<<131, 104, 6, 119, 9, "tool_call", _::binary>>), do: :tool_call
  def frame_kind(<<131, 104, 2, 119, 11, "tool_cancel", _::binary>>), do: :tool_cancel
  def frame_kind(frame), do: classify(frame)

  # A frame with bytes after its term is still routed by its id or kind: its decoder
  # (decode_reply/3, decode_event/1, decode_tool_call/3, ...) refuses it, so that its caller
  # gets an error.
  defp classify(frame) do
    case safe_decode(frame) do
      {:ok, term} -> kind(term)
      {:trailing, term, _extra} -> kind(term)
      :error -> {:unexpected, :unsafe_term, "a frame could not be decoded safely"}
    end
  end

  defp kind({:reply, id, _, _}) when is_integer(id) and id >= 0, do: {:reply, id}
  defp kind({:event, _, _, _}), do: :event
  defp kind({:tool_call, _, _, _, _, _}), do: :tool_call
  defp kind({:tool_cancel, _}), do: :tool_cancel

  defp kind(other),
    do: {:unexpected, :unexpected_frame, "unexpected frame: #{inspect(other, limit: 10)}"}

  # SMALL_INTEGER_EXT, INTEGER_EXT, SMALL_BIG_EXT (non-negative).
  defp reply_id(<<97, id, _::binary>>, _frame), do: {:reply, id}
  defp reply_id(<<98, id::signed-32, _::binary>>, _frame) when id >= 0, do: {:reply, id}

  defp reply_id(<<110, n, 0, digits::binary-size(n), _::binary>>, _frame),
    do: {:reply, :binary.decode_unsigned(digits, :little)}

  defp reply_id(_, frame), do: classify(frame)

  @doc false
  # The ready frame `{snakeport_ready, Version, Info}`: `{:ok, version, info}`, or
  # `{:error, what}` describing what came instead.
  @spec decode_ready(binary()) :: {:ok, term(), map()} | {:error, String.t()}
  def decode_ready(frame) do
    case safe_decode(frame) do
      {:ok, {:snakeport_ready, version, info}} when is_map(info) -> {:ok, version, info}
      {:ok, term} -> {:error, "is #{inspect(term, limit: 10)}"}
      {:trailing, term, extra} -> {:error, "is #{trailing(term, extra)}"}
      :error -> {:error, "names atoms this harness does not know, or is not valid ETF"}
    end
  end

  @doc false
  # An event frame `{event, Name, Measurements, Metadata}`.
  @spec decode_event(binary()) ::
          {:ok, atom(), map(), map()} | {:error, atom(), String.t()}
  def decode_event(frame) do
    case safe_decode(frame) do
      {:ok, {:event, name, measurements, metadata}}
      when is_atom(name) and is_map(measurements) and is_map(metadata) ->
        {:ok, name, measurements, metadata}

      {:ok, other} ->
        {:error, :malformed_event, "malformed event: #{inspect(other, limit: 10)}"}

      {:trailing, other, extra} ->
        {:error, :malformed_event, "malformed event: #{trailing(other, extra)}"}

      :error ->
        {:error, :unsafe_term, "an event could not be decoded safely (unknown atom?)"}
    end
  end

  @doc false
  # The worker's request `{tool_call, CallId, RequestId, Session, Name, Kwargs}`: Python code
  # of request `RequestId` (in `Session`) calls the Elixir tool `Name`. Refs in `Kwargs`
  # become %Snakeport.Ref{} of `instance` (worker index `worker`).
  @spec decode_tool_call(binary(), atom(), non_neg_integer()) ::
          {:ok,
           %{
             call_id: pos_integer(),
             request_id: non_neg_integer(),
             session: String.t(),
             name: String.t(),
             kwargs: map()
           }}
          | {:error, atom(), String.t()}
  def decode_tool_call(frame, instance, worker) do
    case safe_decode_prefix(frame) do
      {:ok, {:tool_call, call_id, request_id, session, name, kwargs}, used}
      when is_integer(call_id) and call_id > 0 and is_integer(request_id) and request_id >= 0 and
             is_binary(session) and is_binary(name) and is_map(kwargs) ->
        {:ok,
         %{
           call_id: call_id,
           request_id: request_id,
           session: session,
           name: name,
           kwargs: from_wire(kwargs, frame, used, instance, worker)
         }}

      {:ok, other, _used} ->
        {:error, :malformed_tool_call, "malformed tool_call: #{inspect(other, limit: 10)}"}

      {:trailing, other, extra} ->
        {:error, :malformed_tool_call, "malformed tool_call: #{trailing(other, extra)}"}

      :error ->
        {:error, :unsafe_term, "a tool_call could not be decoded safely (unknown atom?)"}
    end
  catch
    {:malformed, message} -> {:error, :malformed_tool_call, message}
  end

  @doc false
  # The worker's `{tool_cancel, CallId}`: it no longer waits for that tool call.
  @spec decode_tool_cancel(binary()) :: {:ok, pos_integer()} | {:error, atom(), String.t()}
  def decode_tool_cancel(frame) do
    case safe_decode(frame) do
      {:ok, {:tool_cancel, call_id}} when is_integer(call_id) and call_id > 0 -> {:ok, call_id}
      _ -> {:error, :malformed_tool_cancel, "malformed tool_cancel frame"}
    end
  end

  @doc false
  # The frame answering tool call `call_id`: `{tool_reply, CallId, ok, Value}` (a wire
  # term) or `{tool_reply, CallId, error, #{reason, message, details}}`. Not a request: the
  # worker sends no reply to it.
  @spec tool_reply(
          pos_integer(),
          {:ok, term()} | {:ok, term(), [binary()]} | {:error, atom(), String.t(), map()}
        ) ::
          iodata()
  def tool_reply(call_id, {:ok, value}),
    do: :erlang.term_to_binary({:tool_reply, call_id, :ok, value})

  # A value holding large arrays: their blobs follow the term.
  def tool_reply(call_id, {:ok, value, blobs}),
    do: [:erlang.term_to_binary({:tool_reply, call_id, :ok, value}) | blobs]

  def tool_reply(call_id, {:error, reason, message, details}) do
    error = %{reason: reason, message: message, details: details}
    :erlang.term_to_binary({:tool_reply, call_id, :error, error})
  end

  @doc false
  # `{:ok, term}` for a frame that is exactly one term, `{:trailing, term, extra}` when
  # `extra` bytes follow the term (a malformed frame), `:error` when it is not valid ETF or
  # names an atom that does not exist in this VM.
  @spec safe_decode(binary()) :: {:ok, term()} | {:trailing, term(), pos_integer()} | :error
  def safe_decode(frame) do
    case :erlang.binary_to_term(frame, [:safe, :used]) do
      {term, used} when used == byte_size(frame) -> {:ok, term}
      {term, used} -> {:trailing, term, byte_size(frame) - used}
    end
  rescue
    ArgumentError -> :error
  end

  defp trailing(term, extra) do
    "#{inspect(term, limit: 10)} followed by #{extra} bytes that are not part of it " <>
      "(a frame is exactly one term, plus the blobs its term refers to)"
  end

  # The term at the start of `frame` and where it ends: `{:ok, term, used}`. Bytes may
  # follow the term only when it refers to blobs (docs/PROTOCOL.md, "Blobs"); any other
  # trailing bytes make the frame malformed (`{:trailing, term, extra}`: binary_to_term/2
  # alone would ignore them). `:error` as safe_decode/1.
  defp safe_decode_prefix(frame) do
    {term, used} = :erlang.binary_to_term(frame, [:safe, :used])

    if used == byte_size(frame) or
         :binary.match(frame, "$snakeport_blob", scope: {0, used}) != :nomatch do
      {:ok, term, used}
    else
      {:trailing, term, byte_size(frame) - used}
    end
  rescue
    ArgumentError -> :error
  end

  @doc false
  # Decodes a reply frame in the caller's process. `instance` and `worker` (the worker's
  # index) go into the refs of the value.
  @spec decode_reply(binary(), atom(), non_neg_integer() | nil) ::
          {:ok, term()} | {:error, Error.t()}
  # Fast paths, exact matches of whole frames: `{reply, Id, ok, Binary}` (a sub-binary of
  # the frame: a large payload is not copied) and `{reply, Id, ok, Int32|Float|nil|true|false}`,
  # as the worker writes them (SMALL_ATOM_UTF8_EXT atoms, SMALL_INTEGER_EXT/INTEGER_EXT id).
  # Anything else takes the general path.
  def decode_reply(<<131, 104, 4, 119, 5, "reply", rest::binary>> = frame, instance, worker) do
    case rest do
      <<97, _id, 119, 2, "ok", tail::binary>> -> fast_value(tail, frame, instance, worker)
      <<98, _id::32, 119, 2, "ok", tail::binary>> -> fast_value(tail, frame, instance, worker)
      _ -> decode_reply_term(frame, instance, worker)
    end
  end

  def decode_reply(frame, instance, worker), do: decode_reply_term(frame, instance, worker)

  defp fast_value(<<109, len::32, payload::binary>>, _frame, _instance, _worker)
       when byte_size(payload) == len,
       do: {:ok, payload}

  defp fast_value(<<97, n>>, _frame, _instance, _worker), do: {:ok, n}
  defp fast_value(<<98, n::signed-32>>, _frame, _instance, _worker), do: {:ok, n}
  # NEW_FLOAT_EXT (a NaN or infinity does not match and takes the general path).
  defp fast_value(<<70, f::float-64>>, _frame, _instance, _worker), do: {:ok, f}
  defp fast_value(<<119, 3, "nil">>, _frame, _instance, _worker), do: {:ok, nil}
  defp fast_value(<<119, 4, "true">>, _frame, _instance, _worker), do: {:ok, true}
  defp fast_value(<<119, 5, "false">>, _frame, _instance, _worker), do: {:ok, false}

  defp fast_value(_tail, frame, instance, worker),
    do: decode_reply_term(frame, instance, worker)

  defp decode_reply_term(frame, instance, worker) do
    case safe_decode_prefix(frame) do
      {:ok, {:reply, _id, :ok, value}, used} ->
        {:ok, from_wire(value, frame, used, instance, worker)}

      {:ok, {:reply, _id, :error, error}, _used} ->
        {:error, Error.from_wire(error)}

      {:ok, other, _used} ->
        {:error,
         Error.new(
           :protocol_error,
           "malformed reply from the worker: #{inspect(other, limit: 10)}"
         )}

      {:trailing, other, extra} ->
        {:error,
         Error.new(:protocol_error, "malformed reply from the worker: #{trailing(other, extra)}")}

      :error ->
        {:error,
         Error.new(
           :unsafe_term,
           "the worker's reply cannot be decoded safely: it names an atom that does not " <>
             "exist in this VM (atoms are never created from worker output) or is not valid " <>
             "external term format. Return strings instead of snakeport.types.Atom values " <>
             "that the Elixir side does not already know."
         )}
    end
  catch
    {:malformed, message} ->
      {:error, Error.new(:protocol_error, "malformed reply from the worker: " <> message)}
  end

  ## Reply shapes ------------------------------------------------------------------------------

  @doc false
  # The outcome of a reply frame nobody waits for (its caller timed out, or it answers a
  # cancel or shutdown): `:ok`, or the error it carries. An `ok` value is not decoded.
  @spec reply_outcome(binary()) :: :ok | {:error, Error.t()}
  def reply_outcome(<<131, 104, 4, 119, 5, "reply", rest::binary>> = frame) do
    case rest do
      <<97, _id, 119, 2, "ok", _::binary>> -> :ok
      <<98, _id::32, 119, 2, "ok", _::binary>> -> :ok
      _ -> outcome(decode_reply_term(frame, nil, nil))
    end
  end

  def reply_outcome(frame), do: outcome(decode_reply_term(frame, nil, nil))

  defp outcome({:ok, _}), do: :ok
  defp outcome({:error, _} = error), do: error

  @doc false
  # The refs count of a decoded `release_session` reply.
  @spec released_count({:ok, term()} | {:error, Error.t()}) ::
          {:ok, non_neg_integer()} | {:error, Error.t()}
  def released_count({:ok, %{released: n}}) when is_integer(n) and n >= 0, do: {:ok, n}
  def released_count({:ok, other}), do: {:error, malformed(:release_session, other)}
  def released_count({:error, _} = error), do: error

  @doc false
  # The outcome of a decoded `expire_session` reply: `{:expired, refs_released}` or
  # `{:idle, idle_ms}` (the session was kept: in use, or active within the time asked).
  @spec expired({:ok, term()} | {:error, Error.t()}) ::
          {:ok, {:expired, non_neg_integer()} | {:idle, non_neg_integer()}} | {:error, Error.t()}
  def expired({:ok, %{expired: true, released: n}}) when is_integer(n) and n >= 0,
    do: {:ok, {:expired, n}}

  def expired({:ok, %{expired: false, idle_ms: ms}}) when is_integer(ms) and ms >= 0,
    do: {:ok, {:idle, ms}}

  def expired({:ok, other}), do: {:error, malformed(:expire_session, other)}
  def expired({:error, _} = error), do: error

  @doc false
  # Whether a decoded `release_ref` reply released the ref.
  @spec released_ref({:ok, term()} | {:error, Error.t()}) ::
          {:ok, boolean()} | {:error, Error.t()}
  def released_ref({:ok, %{released: released}}) when is_boolean(released), do: {:ok, released}
  def released_ref({:ok, other}), do: {:error, malformed(:release_ref, other)}
  def released_ref({:error, _} = error), do: error

  @doc false
  # The session info map of a decoded `open_session` or `session_info` reply: `session`,
  # `refs`, `max_refs`, `ttl_seconds` (integer or float), `tags`, `overflow`, `created_at`,
  # `last_access`.
  @spec session_info_map(atom(), {:ok, term()} | {:error, Error.t()}) ::
          {:ok, map()} | {:error, Error.t()}
  def session_info_map(
        _op,
        {:ok, %{session: s, refs: refs, max_refs: max_refs, ttl_seconds: ttl} = info}
      )
      when is_binary(s) and is_integer(refs) and is_integer(max_refs) and max_refs > 0 and
             is_number(ttl) and ttl > 0,
      do: {:ok, info}

  def session_info_map(op, {:ok, other}), do: {:error, malformed(op, other)}
  def session_info_map(_op, {:error, _} = error), do: error

  @doc false
  # A decoded stream batch (the reply of a call/method with batch_size, or of iter_next):
  # `%{items: list, done: boolean, ref: %Ref{} | nil, error: %Error{} | nil}`.
  @spec batch({:ok, term()} | {:error, Error.t()}) :: {:ok, map()} | {:error, Error.t()}
  def batch({:ok, %{items: items, done: done} = value})
      when is_list(items) and is_boolean(done) do
    error =
      case Map.get(value, :error) do
        %{} = error -> Error.from_wire(error)
        _ -> nil
      end

    {:ok, %{items: items, done: done, ref: Map.get(value, :ref), error: error}}
  end

  def batch({:ok, other}), do: {:error, malformed(:stream, other)}
  def batch({:error, _} = error), do: error

  @doc false
  # The stats map of a decoded `stats` reply.
  @spec stats_map({:ok, term()} | {:error, Error.t()}) :: {:ok, map()} | {:error, Error.t()}
  def stats_map({:ok, %{} = stats}) when not is_struct(stats), do: {:ok, stats}
  def stats_map({:ok, other}), do: {:error, malformed(:stats, other)}
  def stats_map({:error, _} = error), do: error

  defp malformed(op, value) do
    Error.new(
      :protocol_error,
      "malformed #{op} reply from the worker: #{inspect(value, limit: 10)}"
    )
  end

  ## Wire <-> Elixir -------------------------------------------------------------------------

  @doc false
  # Elixir -> wire (Snakeport.Values.to_wire/2): the wire term, the session of the first
  # ref in it, the blobs to send after the term.
  @spec to_wire(term(), atom()) ::
          {:ok, term(), String.t() | {String.t(), node()} | nil, [binary()]}
          | {:error, Error.t()}
  defdelegate to_wire(term, instance), to: Snakeport.Values

  @doc false
  # Wire -> Elixir (Snakeport.Values.from_wire/5); `used` is where the frame's term ends.
  @spec from_wire(term(), binary(), non_neg_integer(), atom(), non_neg_integer() | nil) :: term()
  defdelegate from_wire(value, frame, used, instance, worker), to: Snakeport.Values

  @doc false
  # Module and attribute names travel as binaries.
  @spec name(String.t() | atom()) :: String.t()
  def name(name) when is_binary(name), do: name
  def name(name) when is_atom(name) and name not in [nil, true, false], do: Atom.to_string(name)

  def name(other),
    do:
      raise(
        ArgumentError,
        "expected a module/function name (string or atom), got: #{inspect(other)}"
      )
end
