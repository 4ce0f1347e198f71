defmodule Snakeport.ProtocolDecodeTest do
  use ExUnit.Case, async: true
  import Bitwise

  alias Snakeport.{Protocol, Ref}

  defp reply(value), do: :erlang.term_to_binary({:reply, 7, :ok, value})

  @big :binary.copy("x", 10_000)
  @wire_ref {:"$snakeport_ref", "s1", 5, "Box"}

  test "small and large frames: refs and sets nested anywhere are translated" do
    for pad <- ["", @big] do
      value = %{
        "pad" => pad,
        "list" => [1, {:ok, [@wire_ref]}],
        :set => {:"$snakeport_set", [1, 2]}
      }

      assert {:ok, decoded} = Protocol.decode_reply(reply(value), Snakeport, 3)
      assert decoded["pad"] == pad
      assert [1, {:ok, [%Ref{session_id: "s1", id: 5, type: "Box", worker: 3}]}] = decoded["list"]
      assert decoded[:set] == MapSet.new([1, 2])

      # Refs remember the instance whose worker sent them.
      assert {:ok, %{"list" => [1, {:ok, [%Ref{instance: Other, worker: 3}]}]}} =
               Protocol.decode_reply(reply(value), Other, 3)

      # Improper list tail and map keys.
      value = [pad | @wire_ref]
      assert {:ok, [^pad | %Ref{id: 5}]} = Protocol.decode_reply(reply(value), Snakeport, 0)
      value = %{@wire_ref => pad}
      ref = %Ref{session_id: "s1", id: 5, type: "Box", worker: 0, node: node()}
      assert {:ok, %{ref => pad}} == Protocol.decode_reply(reply(value), Snakeport, 0)

      # Refs name their worker's node: this one, or the one a session's route names.
      remote = %{ref | worker: 2, node: :b@elsewhere}

      assert {:ok, %{remote => pad}} ==
               Protocol.decode_reply(reply(value), Snakeport, {2, :b@elsewhere})
    end
  end

  test "a frame is exactly one term: trailing bytes make any frame malformed" do
    # Issue 13, item 6: binary_to_term/2 ignores bytes after the term.
    for value <- ["abc", 1, 1.5, nil, [1, 2], %{a: 1}, {:"$snakeport_set", [1]}, 1 <<< 70],
        extra <- [<<106>>, <<97, 1>>, :binary.copy(<<0>>, 100)] do
      frame = reply(value) <> extra
      assert {:reply, 7} = Protocol.frame_kind(frame)

      assert {:error, %Snakeport.Error{reason: :protocol_error, message: message}} =
               Protocol.decode_reply(frame, Snakeport, 0)

      assert message =~ "followed by #{byte_size(extra)} bytes"
      assert {:ok, _} = Protocol.decode_reply(reply(value), Snakeport, 0)
    end

    # A reply id the fast path does not read (a big integer): still routed, then refused.
    frame = :erlang.term_to_binary({:reply, 1 <<< 70, :ok, 1}) <> <<106>>
    assert Protocol.frame_kind(frame) == {:reply, 1 <<< 70}

    assert {:error, %Snakeport.Error{reason: :protocol_error}} =
             Protocol.decode_reply(frame, nil, nil)

    assert {:error, %Snakeport.Error{reason: :protocol_error}} = Protocol.reply_outcome(frame)

    event = :erlang.term_to_binary({:event, :warning, %{}, %{message: "x"}})
    assert {:ok, :warning, %{}, %{message: "x"}} = Protocol.decode_event(event)
    assert Protocol.frame_kind(event <> <<106>>) == :event

    assert {:error, :malformed_event, "malformed event: " <> _} =
             Protocol.decode_event(event <> <<106>>)

    ready = :erlang.term_to_binary({:snakeport_ready, 1, %{}})
    assert {:ok, 1, %{}} = Protocol.decode_ready(ready)

    assert {:error, "is {:snakeport_ready, 1, %{}} followed by 1 bytes" <> _} =
             Protocol.decode_ready(ready <> <<106>>)

    assert {:unexpected, :unexpected_frame, _} =
             Protocol.frame_kind(:erlang.term_to_binary({:other}) <> <<106>>)

    tool_call = :erlang.term_to_binary({:tool_call, 5, 7, "s", "t", %{}})
    assert {:ok, %{call_id: 5}} = Protocol.decode_tool_call(tool_call, Snakeport, 0)
    assert Protocol.frame_kind(tool_call <> <<106>>) == :tool_call

    assert {:error, :malformed_tool_call, "malformed tool_call: " <> _} =
             Protocol.decode_tool_call(tool_call <> <<106>>, Snakeport, 0)

    tool_cancel = :erlang.term_to_binary({:tool_cancel, 5})
    assert {:ok, 5} = Protocol.decode_tool_cancel(tool_cancel)

    assert {:error, :malformed_tool_cancel, _} =
             Protocol.decode_tool_cancel(tool_cancel <> <<106>>)
  end

  test "the fast paths agree with binary_to_term on every encoding of ids and values" do
    for id <- [0, 7, 255, 256, 70_000, 2_147_483_647, 2_147_483_648, 1 <<< 70],
        value <- [
          "",
          "abc",
          @big,
          0,
          255,
          256,
          -1,
          -2_147_483_648,
          2_147_483_647,
          1 <<< 40,
          1.5,
          -0.0,
          1.0e300,
          nil,
          true,
          false,
          :ok,
          [],
          [1],
          {},
          %{}
        ] do
      frame = :erlang.term_to_binary({:reply, id, :ok, value})
      assert {:ok, got} = Protocol.decode_reply(frame, Snakeport, 0)
      assert got === value
      # The same with atoms as SMALL_ATOM_UTF8_EXT, as the worker writes them.
      frame = :erlang.term_to_binary({:reply, id, :ok, value}, minor_version: 2)
      assert {:ok, got} = Protocol.decode_reply(frame, Snakeport, 0)
      assert got === value
    end

    # Trailing bytes (ignored by binary_to_term, but a frame carries none unless its term
    # refers to blobs: docs/PROTOCOL.md) or a truncated frame: refused by the general path.
    frame = :erlang.term_to_binary({:reply, 1, :ok, "abc"}, minor_version: 2)

    assert {:error, %Snakeport.Error{reason: :protocol_error}} =
             Protocol.decode_reply(frame <> "x", Snakeport, 0)

    assert {:error, %Snakeport.Error{}} =
             Protocol.decode_reply(binary_part(frame, 0, byte_size(frame) - 1), Snakeport, 0)

    assert {:error, %Snakeport.Error{reason: r}} =
             Protocol.decode_reply(
               :erlang.term_to_binary({:reply, 1, :error, %{reason: :cancelled, message: "m"}},
                 minor_version: 2
               ),
               Snakeport,
               0
             )

    assert r == :cancelled
  end

  # What the general path (binary_to_term with [:safe], bytes after the term refused: these
  # frames refer to no blob) makes of a frame, for scalar values.
  defp reference_decode(frame) do
    case :erlang.binary_to_term(frame, [:safe, :used]) do
      {_, used} when used != byte_size(frame) -> :error
      {{:reply, _, :ok, v}, _} when is_binary(v) or is_number(v) or is_atom(v) -> {:ok, v}
      {{:reply, _, :ok, _}, _} -> :other
      _ -> :error
    end
  rescue
    ArgumentError -> :error
  end

  defp fast_decode(frame) do
    case Protocol.decode_reply(frame, Snakeport, 0) do
      {:ok, v} when is_binary(v) or is_number(v) or is_atom(v) -> {:ok, v}
      {:ok, _} -> :other
      {:error, %Snakeport.Error{}} -> :error
    end
  end

  test "crafted frames: every byte changed, truncated or extended, agrees with binary_to_term (no trailing bytes)" do
    values = ["", "abc", :binary.copy("y", 300), 0, 7, 255, 256, -1, 1.5, nil, true, false]

    for value <- values,
        minor <- [1, 2],
        id <- [3, 300],
        frame = :erlang.term_to_binary({:reply, id, :ok, value}, minor_version: minor),
        pos <- 0..(byte_size(frame) - 1),
        <<pre::binary-size(pos), orig, post::binary>> = frame,
        byte <-
          Enum.uniq([
            0,
            1,
            2,
            3,
            4,
            5,
            70,
            97,
            98,
            100,
            104,
            109,
            115,
            118,
            119,
            255,
            rem(orig + 1, 256),
            rem(orig + 255, 256)
          ]) do
      mutated = <<pre::binary, byte, post::binary>>
      assert fast_decode(mutated) === reference_decode(mutated), inspect(mutated)
    end

    for value <- values,
        frame = :erlang.term_to_binary({:reply, 3, :ok, value}, minor_version: 2),
        n <- 0..byte_size(frame),
        crafted <- [binary_part(frame, 0, n), frame <> <<0>>, frame <> <<97, 1, 2>>] do
      assert fast_decode(crafted) === reference_decode(crafted), inspect(crafted)
    end

    # nil/true/false in every atom encoding (ATOM_EXT, SMALL_ATOM_EXT, ATOM_UTF8_EXT,
    # SMALL_ATOM_UTF8_EXT) decode to the same value.
    head = <<131, 104, 4, 119, 5, "reply", 97, 1, 119, 2, "ok">>

    for name <- ["nil", "true", "false"],
        enc <- [
          <<100, 0, byte_size(name)>>,
          <<115, byte_size(name)>>,
          <<118, 0, byte_size(name)>>,
          <<119, byte_size(name)>>
        ] do
      assert {:ok, String.to_existing_atom(name)} ==
               Protocol.decode_reply(head <> enc <> name, Snakeport, 0)
    end
  end

  test "a large binary result is a sub-binary of the frame (not copied)" do
    payload = :binary.copy("z", 100_000)
    frame = :erlang.term_to_binary({:reply, 9, :ok, payload}, minor_version: 2)
    assert {:ok, ^payload} = got = Protocol.decode_reply(frame, Snakeport, 0)
    {:ok, bin} = got
    assert :binary.referenced_byte_size(bin) == byte_size(frame)
  end

  test "a NaN or infinity float on the wire is an error, as binary_to_term has it" do
    for bits <- [<<0x7FF8::16, 0::48>>, <<0x7FF0::16, 0::48>>] do
      frame = <<131, 104, 4, 119, 5, "reply", 97, 1, 119, 2, "ok", 70>> <> bits

      assert {:error, %Snakeport.Error{reason: :unsafe_term}} =
               Protocol.decode_reply(frame, Snakeport, 0)
    end
  end

  test "values without tags come back as they are, whatever their size" do
    for value <- [
          @big,
          1,
          1.5,
          :ok,
          nil,
          [@big, "$snakeport_ref"],
          %{"$snakeport_set" => @big},
          {"$snakeport_ref", "s", 1, "t"},
          {@big}
        ] do
      assert {:ok, ^value} = Protocol.decode_reply(reply(value), Snakeport, 0)
    end
  end

  describe "requests" do
    test "each builder encodes the request of docs/PROTOCOL.md, with its id and session" do
      ref = %Ref{session_id: "s", id: 4, type: "T"}
      wire = {:"$snakeport_ref", "s", 4, "T"}

      for {request, session, expected} <- [
            {Protocol.call("m", "f", [1], %{k: 2}, %{result: :ref}), "s",
             {:call, 9, "s", "m", "f", [1], %{k: 2}, %{result: :ref}}},
            {Protocol.method(Protocol.ref(ref), "n", [], %{}, %{}), "s",
             {:method, 9, "s", wire, "n", [], %{}, %{}}},
            {Protocol.getattr(Protocol.module_target("math"), "pi", %{}), "s",
             {:getattr, 9, "s", {:module, "math"}, "pi", %{}}},
            {Protocol.setattr(wire, "x", 1, %{}), "s", {:setattr, 9, "s", wire, "x", 1, %{}}},
            {Protocol.open_session(%{max_refs: 5}), "s", {:open_session, 9, "s", %{max_refs: 5}}},
            {Protocol.release_ref(wire), "s", {:release_ref, 9, "s", wire}},
            {Protocol.release_session(), "s", {:release_session, 9, "s"}},
            {Protocol.session_info(), "s", {:session_info, 9, "s"}},
            {Protocol.stats(), nil, {:stats, 9}},
            {Protocol.ping(), nil, {:ping, 9}},
            {Protocol.cancel(3), nil, {:cancel, 9, 3}},
            {Protocol.shutdown(), nil, {:shutdown, 9}}
          ] do
        encoded = request |> Protocol.encode(9, session) |> IO.iodata_to_binary()
        assert :erlang.binary_to_term(encoded) == expected
      end

      # Large arguments are spliced in as iodata, to the same bytes.
      big = :binary.copy("b", 100_000)
      request = Protocol.call("m", "f", [big, Snakeport.bytes(big)], %{k: big}, %{})
      encoded = Protocol.encode(request, 1, "s")
      assert is_list(encoded)

      assert :erlang.binary_to_term(IO.iodata_to_binary(encoded)) ==
               {:call, 1, "s", "m", "f", [big, {:"$snakeport_bytes", big}], %{k: big}, %{}}
    end

    test "refs of another instance are refused, not sent" do
      ref = %Ref{session_id: "s", id: 4, type: "T", instance: Other}

      assert {:ok, {:"$snakeport_ref", "s", 4, "T"}, "s", []} = Protocol.to_wire(ref, Other)

      assert {:error, %Snakeport.Error{reason: :instance_mismatch, message: message}} =
               Protocol.to_wire([1, %{k: {ref}}], Snakeport)

      assert message =~ "instance: Other"
    end
  end
end
