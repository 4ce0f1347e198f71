defmodule Snakeport.Values do
  @moduledoc false
  # Wire <-> Elixir values (docs/PROTOCOL.md, "Values"): the reserved tagged terms and the
  # structs they stand for, both ways, and the blobs of large arrays.
  #
  #   %Snakeport.Ref{}         {'$snakeport_ref', Session, RefId, Type}
  #   MapSet                   {'$snakeport_set', List}
  #   %Snakeport.Array{}       {'$snakeport_array', {Kind, Bits}, Shape, Data, Dtype}
  #   Date                     {'$snakeport_date', Y, M, D}
  #   Time                     {'$snakeport_time', H, Mi, S, Us}
  #   NaiveDateTime, DateTime  {'$snakeport_datetime', Y, Mo, D, H, Mi, S, Us, Zone}
  #   %Snakeport.Duration{}    {'$snakeport_timedelta', Us}
  #   %Snakeport.Decimal{}     {'$snakeport_decimal', Sign, Coef, Exp}
  #   %Snakeport.UUID{}        {'$snakeport_uuid', Text}
  #   Range                    {'$snakeport_range', Start, Stop, Step} (Python's bounds)
  #   %Snakeport.DataFrame{}   {'$snakeport_dataframe', Columns, Index, Data}
  #   %Snakeport.Series{}      {'$snakeport_series', Name, Index, Data}
  #   %Snakeport.Index{}       {'$snakeport_index', Names, Data}
  #   %Snakeport.Extension{}   {'$snakeport_ext', Name, Payload}
  #   %Snakeport.Arrow{}       {'$snakeport_arrow', Data} (an Arrow IPC stream)
  #   other structs            Snakeport.Encoder.encode/1 (default: the struct as a map)
  #
  # Blobs: an array's data (or an Arrow stream) of at least @blob_min bytes travels after the frame's term as
  # {'$snakeport_blob', Offset, Size} (Offset counted from the end of the term), both ways:
  # to_wire/2 returns the binaries to append (never copied: they go to Port.command/2 as
  # iodata), from_wire/4 takes sub-binaries of the reply frame.

  alias Snakeport.{
    Array,
    Arrow,
    DataFrame,
    Decimal,
    Duration,
    Error,
    Extension,
    Index,
    Ref,
    Series,
    UUID
  }

  @blob_min 65_536

  @tags [
    :"$snakeport_ref",
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
    :"$snakeport_arrow"
  ]

  ## Elixir -> wire ---------------------------------------------------------------------------

  @doc false
  # The wire term of `term` for a request to `instance`, the session of the first ref in it
  # (nil when none) and the blobs to send after the term (in order; [] when none). Raises
  # ArgumentError for a malformed Snakeport struct (an array whose data does not fit its
  # shape); an :instance_mismatch error for a ref of another instance (its ref id could
  # name another object there).
  @spec to_wire(term(), atom()) ::
          {:ok, term(), String.t() | {String.t(), node()} | nil, [binary()]}
          | {:error, Error.t()}
  def to_wire(term, instance) do
    if special?(term) do
      {wire, {_i, blobs, _offset}} = walk_out(term, {instance, [], 0})
      {:ok, wire, ref_session(term), Enum.reverse(blobs)}
    else
      {:ok, term, nil, []}
    end
  catch
    {:instance_mismatch, ref} -> {:error, Snakeport.Instance.mismatch_error(ref, instance)}
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

  # walk_out(term, acc) -> {wire, acc}; acc = {instance, blobs (reversed), next offset}.
  defp walk_out(%Ref{instance: instance} = ref, {instance, _, _} = acc),
    do: {Snakeport.Protocol.ref(ref), acc}

  defp walk_out(%Ref{} = ref, _acc), do: throw({:instance_mismatch, ref})

  defp walk_out(%MapSet{} = set, acc) do
    {items, acc} = walk_list(Enum.to_list(set), acc)
    {{:"$snakeport_set", items}, acc}
  end

  defp walk_out(%Array{} = array, acc) do
    case Array.check(array) do
      :ok -> :ok
      {:error, message} -> raise ArgumentError, message
    end

    %Array{type: type, shape: shape, data: data, dtype: dtype} = array

    if byte_size(data) >= @blob_min do
      {instance, blobs, offset} = acc
      blob = {:"$snakeport_blob", offset, byte_size(data)}

      {{:"$snakeport_array", type, shape, blob, dtype},
       {instance, [data | blobs], offset + byte_size(data)}}
    else
      {{:"$snakeport_array", type, shape, data, dtype}, acc}
    end
  end

  defp walk_out(%Arrow{data: data}, acc) when is_binary(data) do
    if byte_size(data) >= @blob_min do
      {instance, blobs, offset} = acc
      blob = {:"$snakeport_blob", offset, byte_size(data)}
      {{:"$snakeport_arrow", blob}, {instance, [data | blobs], offset + byte_size(data)}}
    else
      {{:"$snakeport_arrow", data}, acc}
    end
  end

  defp walk_out(%Arrow{data: data}, _acc),
    do:
      raise(
        ArgumentError,
        "expected %Snakeport.Arrow{} data to be a binary, got: #{inspect(data)}"
      )

  defp walk_out(%Date{} = date, acc) do
    %Date{year: y, month: m, day: d} = Date.convert!(date, Calendar.ISO)
    {{:"$snakeport_date", y, m, d}, acc}
  end

  defp walk_out(%Time{} = time, acc) do
    %Time{hour: h, minute: mi, second: s, microsecond: {us, _}} =
      Time.convert!(time, Calendar.ISO)

    {{:"$snakeport_time", h, mi, s, us}, acc}
  end

  defp walk_out(%NaiveDateTime{} = ndt, acc) do
    ndt = NaiveDateTime.convert!(ndt, Calendar.ISO)
    {datetime_term(ndt, nil), acc}
  end

  defp walk_out(%DateTime{} = dt, acc) do
    dt = DateTime.convert!(dt, Calendar.ISO)
    zone = {dt.utc_offset, dt.std_offset, dt.time_zone, dt.zone_abbr}
    {datetime_term(dt, zone), acc}
  end

  defp walk_out(%Duration{microseconds: us}, acc) when is_integer(us),
    do: {{:"$snakeport_timedelta", us}, acc}

  defp walk_out(%Decimal{sign: sign, coef: coef, exp: exp}, acc),
    do: {{:"$snakeport_decimal", sign, coef, exp}, acc}

  defp walk_out(%UUID{string: string}, acc), do: {{:"$snakeport_uuid", string}, acc}

  defp walk_out(%Range{first: first, last: last, step: step}, acc),
    do: {{:"$snakeport_range", first, last + sign(step), step}, acc}

  defp walk_out(%DataFrame{columns: columns, index: index, data: data}, acc) do
    {[columns, index, data], acc} = walk_list([columns, index, data], acc)
    {{:"$snakeport_dataframe", columns, index, data}, acc}
  end

  defp walk_out(%Series{name: name, index: index, data: data}, acc) do
    {[name, index, data], acc} = walk_list([name, index, data], acc)
    {{:"$snakeport_series", name, index, data}, acc}
  end

  defp walk_out(%Index{names: names, data: data}, acc) do
    {[names, data], acc} = walk_list([names, data], acc)
    {{:"$snakeport_index", names, data}, acc}
  end

  defp walk_out(%Extension{name: name, payload: payload}, acc) do
    {payload, acc} = walk_out(payload, acc)
    {{:"$snakeport_ext", name, payload}, acc}
  end

  # Other structs: their Snakeport.Encoder implementation, or a map (the default).
  defp walk_out(%module{} = struct, acc) do
    case Snakeport.Encoder.encode(struct) do
      ^struct ->
        walk_map(struct, acc)

      %^module{} ->
        raise ArgumentError,
              "Snakeport.Encoder.encode/1 for #{inspect(module)} returned a #{inspect(module)} " <>
                "again; return another term (a map, a %Snakeport.Extension{}, ...)"

      encoded ->
        walk_out(encoded, acc)
    end
  end

  defp walk_out(map, acc) when is_map(map), do: walk_map(map, acc)
  defp walk_out(list, acc) when is_list(list), do: walk_list(list, acc)

  defp walk_out(tuple, acc) when is_tuple(tuple) do
    {items, acc} = walk_list(Tuple.to_list(tuple), acc)
    {List.to_tuple(items), acc}
  end

  defp walk_out(other, acc), do: {other, acc}

  # :maps.fold, not Map.new/Enum: the map may be a struct (or carry a :__struct__ key).
  defp walk_map(map, acc) do
    :maps.fold(
      fn k, v, {out, acc} ->
        {k, acc} = walk_out(k, acc)
        {v, acc} = walk_out(v, acc)
        {Map.put(out, k, v), acc}
      end,
      {%{}, acc},
      map
    )
  end

  defp walk_list([h | t], acc) do
    {h, acc} = walk_out(h, acc)
    {t, acc} = walk_list(t, acc)
    {[h | t], acc}
  end

  defp walk_list([], acc), do: {[], acc}
  defp walk_list(tail, acc), do: walk_out(tail, acc)

  defp datetime_term(dt, zone) do
    {us, _precision} = dt.microsecond
    {:"$snakeport_datetime", dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, us, zone}
  end

  defp sign(step) when step < 0, do: -1
  defp sign(_step), do: 1

  # The session of the first ref in the term, or nil.
  defp ref_session(%Ref{} = ref), do: Ref.session_key(ref)
  defp ref_session(%MapSet{} = set), do: Enum.find_value(set, &ref_session/1)
  defp ref_session(%Array{}), do: nil
  defp ref_session(%_{} = struct), do: struct |> Map.from_struct() |> ref_session()

  defp ref_session(map) when is_map(map),
    do:
      map |> :maps.to_list() |> Enum.find_value(fn {k, v} -> ref_session(k) || ref_session(v) end)

  defp ref_session([h | t]), do: ref_session(h) || ref_session(t)
  defp ref_session(tuple) when is_tuple(tuple), do: tuple |> Tuple.to_list() |> ref_session()
  defp ref_session(_), do: nil

  ## Wire -> Elixir ---------------------------------------------------------------------------

  # Below this many bytes a frame is scanned for the reserved prefix (cheap for small
  # frames); above it the decoded term is checked instead, whose cost grows with the number
  # of terms, not with the size of the binaries in it (a 1 MiB binary is one term).
  @scan_limit 4_096

  @doc false
  # Wire -> Elixir. `frame` is the raw frame and `used` where its term ends (the bytes
  # after it are the blobs); the walk only runs when the value holds a reserved tag at all.
  # Refs get `instance` and the worker index `worker`. Throws {:malformed, message} for a
  # tagged term that is not what docs/PROTOCOL.md says.
  @spec from_wire(term(), binary(), non_neg_integer(), atom(), non_neg_integer() | nil) :: term()
  def from_wire(value, _frame, _used, _instance, _worker)
      when is_binary(value) or is_number(value) or is_atom(value),
      do: value

  def from_wire(value, frame, used, instance, worker) do
    cond do
      byte_size(frame) < @scan_limit and :binary.match(frame, "$snakeport_") == :nomatch ->
        value

      byte_size(frame) >= @scan_limit and not tagged?(value) ->
        value

      true ->
        walk_in(value, {instance, worker, frame, used})
    end
  end

  # Allocation-free: does the term hold a tuple starting with a reserved tag anywhere?
  defp tagged?(term) when is_tuple(term) and tuple_size(term) > 0 do
    case elem(term, 0) do
      tag when tag in @tags -> true
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

  # ctx = {instance, worker, frame, used}; `worker` is an index, or {index, node} in a
  # session of another node (its info's ref_worker, Snakeport.Sessions.Server).
  defp walk_in({:"$snakeport_ref", s, id, type}, {instance, {worker, node}, _, _})
       when is_binary(s) and is_integer(id) and id > 0,
       do: %Ref{session_id: s, id: id, type: type, worker: worker, instance: instance, node: node}

  defp walk_in({:"$snakeport_ref", s, id, type}, {instance, worker, _, _})
       when is_binary(s) and is_integer(id) and id > 0,
       do: %Ref{
         session_id: s,
         id: id,
         type: type,
         worker: worker,
         instance: instance,
         node: node()
       }

  defp walk_in({:"$snakeport_set", list}, ctx) when is_list(list),
    do: MapSet.new(list, &walk_in(&1, ctx))

  defp walk_in({:"$snakeport_array", type, shape, data, dtype} = term, ctx) do
    array = %Array{type: type, shape: shape, data: blob(data, ctx), dtype: dtype}

    case Array.check(array) do
      :ok -> array
      {:error, message} -> malformed(term, message)
    end
  end

  defp walk_in({:"$snakeport_date", y, m, d} = term, _ctx) do
    case ints([y, m, d]) && Date.new(y, m, d) do
      {:ok, date} -> date
      _ -> malformed(term)
    end
  end

  defp walk_in({:"$snakeport_time", h, mi, s, us} = term, _ctx) do
    case ints([h, mi, s, us]) && Time.new(h, mi, s, {us, 6}) do
      {:ok, time} -> time
      _ -> malformed(term)
    end
  end

  defp walk_in({:"$snakeport_datetime", y, mo, d, h, mi, s, us, zone} = term, _ctx) do
    with true <- ints([y, mo, d, h, mi, s, us]),
         {:ok, ndt} <- NaiveDateTime.new(y, mo, d, h, mi, s, {us, 6}) do
      case zone do
        nil ->
          ndt

        {utc, std, tz, abbr}
        when is_integer(utc) and is_integer(std) and is_binary(tz) and is_binary(abbr) ->
          %DateTime{
            year: y,
            month: mo,
            day: d,
            hour: h,
            minute: mi,
            second: s,
            microsecond: {us, 6},
            time_zone: tz,
            zone_abbr: abbr,
            utc_offset: utc,
            std_offset: std
          }

        _ ->
          malformed(term)
      end
    else
      _ -> malformed(term)
    end
  end

  defp walk_in({:"$snakeport_timedelta", us}, _ctx) when is_integer(us),
    do: %Duration{microseconds: us}

  defp walk_in({:"$snakeport_decimal", sign, coef, exp}, _ctx)
       when sign in [1, -1] and is_integer(exp) and
              ((is_integer(coef) and coef >= 0) or coef in [:NaN, :sNaN, :inf]),
       do: %Decimal{sign: sign, coef: coef, exp: exp}

  defp walk_in({:"$snakeport_uuid", string}, _ctx) when is_binary(string),
    do: %UUID{string: string}

  defp walk_in({:"$snakeport_range", start, stop, step}, _ctx)
       when is_integer(start) and is_integer(stop) and is_integer(step) and step != 0 do
    n =
      if step > 0,
        do: div(stop - start + step - 1, step),
        else: div(start - stop - step - 1, -step)

    if n <= 0,
      do: %Range{first: start, last: start - sign(step), step: step},
      else: %Range{first: start, last: start + (n - 1) * step, step: step}
  end

  defp walk_in({:"$snakeport_dataframe", columns, index, data} = term, ctx) do
    case {walk_in(columns, ctx), walk_in(index, ctx), walk_in(data, ctx)} do
      {columns, %Index{} = index, data}
      when is_list(columns) and is_list(data) and length(columns) == length(data) ->
        %DataFrame{columns: columns, index: index, data: data}

      _ ->
        malformed(term)
    end
  end

  defp walk_in({:"$snakeport_series", name, index, data} = term, ctx) do
    case walk_in(index, ctx) do
      %Index{} = index ->
        %Series{name: walk_in(name, ctx), index: index, data: walk_in(data, ctx)}

      _ ->
        malformed(term)
    end
  end

  defp walk_in({:"$snakeport_index", names, data} = term, ctx) when is_list(names) do
    case walk_in(data, ctx) do
      data when is_list(data) or is_struct(data, Range) or is_struct(data, Array) ->
        %Index{names: walk_in(names, ctx), data: data}

      _ ->
        malformed(term)
    end
  end

  defp walk_in({:"$snakeport_arrow", data} = term, ctx) do
    case blob(data, ctx) do
      data when is_binary(data) -> %Arrow{data: data}
      _ -> malformed(term)
    end
  end

  defp walk_in({:"$snakeport_ext", name, payload}, ctx) when is_binary(name),
    do: %Extension{name: name, payload: walk_in(payload, ctx)}

  defp walk_in(tuple, _ctx)
       when is_tuple(tuple) and tuple_size(tuple) > 0 and elem(tuple, 0) in @tags,
       do: malformed(tuple)

  defp walk_in(list, ctx) when is_list(list), do: walk_in_list(list, ctx)

  defp walk_in(map, ctx) when is_map(map),
    do: :maps.fold(fn k, v, acc -> Map.put(acc, walk_in(k, ctx), walk_in(v, ctx)) end, %{}, map)

  defp walk_in(tuple, ctx) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> Enum.map(&walk_in(&1, ctx)) |> List.to_tuple()

  defp walk_in(other, _ctx), do: other

  defp walk_in_list([h | t], ctx), do: [walk_in(h, ctx) | walk_in_list(t, ctx)]
  defp walk_in_list([], _ctx), do: []
  defp walk_in_list(tail, ctx), do: walk_in(tail, ctx)

  # An array's data: a binary, or a blob (a sub-binary of the frame: not copied).
  defp blob({:"$snakeport_blob", offset, size} = term, {_, _, frame, used})
       when is_integer(offset) and is_integer(size) and offset >= 0 and size >= 0 do
    if used + offset + size <= byte_size(frame) do
      binary_part(frame, used + offset, size)
    else
      malformed(term, "the blob is beyond the #{byte_size(frame) - used} bytes after the term")
    end
  end

  defp blob(data, _ctx), do: data

  defp ints(values), do: Enum.all?(values, &is_integer/1)

  defp malformed(term, why \\ nil) do
    text = inspect(term, limit: 8, printable_limit: 64)

    throw(
      {:malformed, "malformed #{elem(term, 0)} term #{text}" <> if(why, do: ": #{why}", else: "")}
    )
  end
end
