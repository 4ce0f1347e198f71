defmodule Snakeport.Protocol do
  @moduledoc false
  # The wire contract of docs/PROTOCOL.md (version 1): request encoding, reply and event
  # decoding, and the translation between wire terms and Elixir terms (refs, sets, bytes).
  #
  # Decoding rule: every frame from the worker is decoded with `binary_to_term(_, [:safe])`,
  # so worker output can never create an atom. Every atom the protocol itself uses is
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
    # values
    :infinity,
    :neg_infinity,
    :nan,
    nil,
    true,
    false,
    :"$snakeport_ref",
    :"$snakeport_bytes",
    :"$snakeport_set"
  ]

  # Requests whose external size is below this are encoded in one term_to_binary/1; larger
  # ones are built as iodata in which big binary arguments are referenced, not copied.
  @splice_threshold 65_536

  @doc false
  def version, do: @version

  @doc false
  def atoms, do: @atoms

  ## Requests ------------------------------------------------------------------------------

  @doc false
  # Encodes a request tuple. Returns a binary for ordinary requests and iodata (sharing
  # the caller's big binaries) when arguments are large.
  @spec encode(tuple()) :: iodata()
  def encode(request) when is_tuple(request) do
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
  # Classifies a frame by its first bytes without decoding it: `{:reply, id}`, `:event`,
  # or `:unknown` (then the caller falls back to a full, safe decode). The worker writes
  # atoms as SMALL_ATOM_UTF8_EXT (119); the other atom encodings are accepted too.
  @spec frame_kind(binary()) :: {:reply, non_neg_integer()} | :event | :unknown
  def frame_kind(<<131, 104, 4, 119, 5, "reply", rest::binary>>), do: reply_id(rest)
  def frame_kind(<<131, 104, 4, 118, 0, 5, "reply", rest::binary>>), do: reply_id(rest)
  def frame_kind(<<131, 104, 4, 115, 5, "reply", rest::binary>>), do: reply_id(rest)
  def frame_kind(<<131, 104, 4, 100, 0, 5, "reply", rest::binary>>), do: reply_id(rest)
  def frame_kind(<<131, 104, 4, 119, 5, "event", _::binary>>), do: :event
  def frame_kind(<<131, 104, 4, 118, 0, 5, "event", _::binary>>), do: :event
  def frame_kind(_), do: :unknown

  # SMALL_INTEGER_EXT, INTEGER_EXT, SMALL_BIG_EXT (non-negative).
  defp reply_id(<<97, id, _::binary>>), do: {:reply, id}
  defp reply_id(<<98, id::signed-32, _::binary>>) when id >= 0, do: {:reply, id}

  defp reply_id(<<110, n, 0, digits::binary-size(n), _::binary>>),
    do: {:reply, :binary.decode_unsigned(digits, :little)}

  defp reply_id(_), do: :unknown

  @doc false
  @spec safe_decode(binary()) :: {:ok, term()} | :error
  def safe_decode(frame) do
    {:ok, :erlang.binary_to_term(frame, [:safe])}
  rescue
    ArgumentError -> :error
  end

  @doc false
  # Decodes a reply frame in the caller's process. `worker` is the worker index put in refs.
  @spec decode_reply(binary(), non_neg_integer() | nil) :: {:ok, term()} | {:error, Error.t()}
  # Fast paths, exact matches of whole frames: `{reply, Id, ok, Binary}` (a sub-binary of
  # the frame: a large payload is not copied) and `{reply, Id, ok, Int32|Float|nil|true|false}`, as the worker
  # writes them (SMALL_ATOM_UTF8_EXT atoms, SMALL_INTEGER_EXT/INTEGER_EXT id). Anything
  # else takes the general path.
  def decode_reply(<<131, 104, 4, 119, 5, "reply", rest::binary>> = frame, worker) do
    case rest do
      <<97, _id, 119, 2, "ok", tail::binary>> -> fast_value(tail, frame, worker)
      <<98, _id::32, 119, 2, "ok", tail::binary>> -> fast_value(tail, frame, worker)
      _ -> decode_reply_term(frame, worker)
    end
  end

  def decode_reply(frame, worker), do: decode_reply_term(frame, worker)

  defp fast_value(<<109, len::32, payload::binary>>, _frame, _worker)
       when byte_size(payload) == len,
       do: {:ok, payload}

  defp fast_value(<<97, n>>, _frame, _worker), do: {:ok, n}
  defp fast_value(<<98, n::signed-32>>, _frame, _worker), do: {:ok, n}
  # NEW_FLOAT_EXT (a NaN or infinity does not match and takes the general path).
  defp fast_value(<<70, f::float-64>>, _frame, _worker), do: {:ok, f}
  defp fast_value(<<119, 3, "nil">>, _frame, _worker), do: {:ok, nil}
  defp fast_value(<<119, 4, "true">>, _frame, _worker), do: {:ok, true}
  defp fast_value(<<119, 5, "false">>, _frame, _worker), do: {:ok, false}
  defp fast_value(_tail, frame, worker), do: decode_reply_term(frame, worker)

  defp decode_reply_term(frame, worker) do
    case safe_decode(frame) do
      {:ok, {:reply, _id, :ok, value}} ->
        {:ok, from_wire(value, frame, worker)}

      {:ok, {:reply, _id, :error, error}} ->
        {:error, Error.from_wire(error)}

      {:ok, other} ->
        {:error,
         Error.new(
           :protocol_error,
           "malformed reply from the worker: #{inspect(other, limit: 10)}"
         )}

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
  end

  ## Wire <-> Elixir -------------------------------------------------------------------------

  @doc false
  # Elixir -> wire: %Ref{} -> ref tuple, MapSet -> set tuple (anywhere in the term).
  # Returns the wire term and the session of the first ref found (nil when none).
  @spec to_wire(term()) :: {term(), String.t() | nil}
  def to_wire(term) do
    if special?(term) do
      {walk_out(term), ref_session(term)}
    else
      {term, nil}
    end
  end

  # Allocation-free check whether the term needs translating.
  defp special?(term) when is_list(term), do: list_special?(term)
  defp special?(%_{}), do: true

  defp special?(term) when is_map(term),
    do: :maps.fold(fn k, v, acc -> acc or special?(k) or special?(v) end, false, term)

  defp special?(term) when is_tuple(term), do: tuple_special?(term, tuple_size(term))
  defp special?(_), do: false

  defp list_special?([h | t]), do: special?(h) or list_special?(t)
  defp list_special?([]), do: false
  defp list_special?(improper_tail), do: special?(improper_tail)

  defp tuple_special?(_t, 0), do: false
  defp tuple_special?(t, i), do: special?(elem(t, i - 1)) or tuple_special?(t, i - 1)

  defp walk_out(%Ref{session_id: s, id: id, type: type}), do: {:"$snakeport_ref", s, id, type}

  defp walk_out(%MapSet{} = set), do: {:"$snakeport_set", Enum.map(set, &walk_out/1)}

  # Other structs travel as maps (their :__struct__ key included).
  defp walk_out(%_{} = struct), do: walk_out_map(struct)

  defp walk_out(map) when is_map(map), do: walk_out_map(map)
  defp walk_out(list) when is_list(list), do: walk_out_list(list)

  defp walk_out(tuple) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> Enum.map(&walk_out/1) |> List.to_tuple()

  defp walk_out(other), do: other

  # :maps.fold, not Map.new/Enum: the map may be a struct (or carry a :__struct__ key).
  defp walk_out_map(map),
    do: :maps.fold(fn k, v, acc -> Map.put(acc, walk_out(k), walk_out(v)) end, %{}, map)

  defp walk_out_list([h | t]), do: [walk_out(h) | walk_out_list(t)]
  defp walk_out_list([]), do: []
  defp walk_out_list(tail), do: walk_out(tail)

  # The session of the first ref in the term, or nil.
  defp ref_session(%Ref{session_id: s}), do: s
  defp ref_session(%MapSet{} = set), do: Enum.find_value(set, &ref_session/1)
  defp ref_session(%_{} = struct), do: struct |> Map.from_struct() |> ref_session()

  defp ref_session(map) when is_map(map),
    do:
      map |> :maps.to_list() |> Enum.find_value(fn {k, v} -> ref_session(k) || ref_session(v) end)

  defp ref_session([h | t]), do: ref_session(h) || ref_session(t)
  defp ref_session(tuple) when is_tuple(tuple), do: tuple |> Tuple.to_list() |> ref_session()
  defp ref_session(_), do: nil

  # Below this many bytes a reply frame is scanned for the reserved prefix (cheap for small
  # frames); above it the decoded term is checked instead, whose cost grows with the number
  # of terms, not with the size of the binaries in it (a 1 MiB binary is one term).
  @scan_limit 4_096

  @doc false
  # Wire -> Elixir. `frame` is the raw reply: the walk only runs when the value holds a
  # reserved tag at all.
  @spec from_wire(term(), binary(), non_neg_integer() | nil) :: term()
  def from_wire(value, _frame, _worker)
      when is_binary(value) or is_number(value) or is_atom(value),
      do: value

  def from_wire(value, frame, worker) do
    cond do
      is_binary(frame) and byte_size(frame) < @scan_limit and
          :binary.match(frame, "$snakeport_") == :nomatch ->
        value

      is_binary(frame) and byte_size(frame) >= @scan_limit and not tagged?(value) ->
        value

      true ->
        walk_in(value, worker)
    end
  end

  # Allocation-free: does the term hold a {:"$snakeport_ref", ...} or {:"$snakeport_set", _}
  # tuple anywhere? (Over-approximates like the scan: any tuple starting with those atoms.)
  defp tagged?(term) when is_tuple(term) and tuple_size(term) > 0 do
    case elem(term, 0) do
      tag when tag in [:"$snakeport_ref", :"$snakeport_set"] -> true
      _ -> tuple_tagged?(term, tuple_size(term))
    end
  end

  defp tagged?(term) when is_list(term), do: list_tagged?(term)

  defp tagged?(term) when is_map(term),
    do: :maps.fold(fn k, v, acc -> acc or tagged?(k) or tagged?(v) end, false, term)

  defp tagged?(_), do: false

  defp list_tagged?([h | t]), do: tagged?(h) or list_tagged?(t)
  defp list_tagged?([]), do: false
  defp list_tagged?(improper_tail), do: tagged?(improper_tail)

  defp tuple_tagged?(_t, 0), do: false
  defp tuple_tagged?(t, i), do: tagged?(elem(t, i - 1)) or tuple_tagged?(t, i - 1)

  defp walk_in({:"$snakeport_ref", s, id, type}, w) when is_binary(s) and is_integer(id),
    do: %Ref{session_id: s, id: id, type: type, worker: w}

  defp walk_in({:"$snakeport_set", list}, w) when is_list(list),
    do: MapSet.new(list, &walk_in(&1, w))

  defp walk_in(list, w) when is_list(list), do: walk_in_list(list, w)

  defp walk_in(map, w) when is_map(map),
    do: :maps.fold(fn k, v, acc -> Map.put(acc, walk_in(k, w), walk_in(v, w)) end, %{}, map)

  defp walk_in(tuple, w) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> Enum.map(&walk_in(&1, w)) |> List.to_tuple()

  defp walk_in(other, _w), do: other

  defp walk_in_list([h | t], w), do: [walk_in(h, w) | walk_in_list(t, w)]
  defp walk_in_list([], _w), do: []
  defp walk_in_list(tail, w), do: walk_in(tail, w)

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
