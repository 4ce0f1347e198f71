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

      assert {:ok, decoded} = Protocol.decode_reply(reply(value), 3)
      assert decoded["pad"] == pad
      assert [1, {:ok, [%Ref{session_id: "s1", id: 5, type: "Box", worker: 3}]}] = decoded["list"]
      assert decoded[:set] == MapSet.new([1, 2])

      # Improper list tail and map keys.
      value = [pad | @wire_ref]
      assert {:ok, [^pad | %Ref{id: 5}]} = Protocol.decode_reply(reply(value), 0)
      value = %{@wire_ref => pad}
      ref = %Ref{session_id: "s1", id: 5, type: "Box", worker: 0}
      assert {:ok, %{ref => pad}} == Protocol.decode_reply(reply(value), 0)
    end
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
      assert {:ok, got} = Protocol.decode_reply(frame, 0)
      assert got === value
      # The same with atoms as SMALL_ATOM_UTF8_EXT, as the worker writes them.
      frame = :erlang.term_to_binary({:reply, id, :ok, value}, minor_version: 2)
      assert {:ok, got} = Protocol.decode_reply(frame, 0)
      assert got === value
    end

    # Trailing bytes (ignored by binary_to_term) or a truncated frame: the general path.
    frame = :erlang.term_to_binary({:reply, 1, :ok, "abc"}, minor_version: 2)
    assert {:ok, "abc"} = Protocol.decode_reply(frame <> "x", 0)

    assert {:error, %Snakeport.Error{}} =
             Protocol.decode_reply(binary_part(frame, 0, byte_size(frame) - 1), 0)

    assert {:error, %Snakeport.Error{reason: r}} =
             Protocol.decode_reply(
               :erlang.term_to_binary({:reply, 1, :error, %{reason: :cancelled, message: "m"}},
                 minor_version: 2
               ),
               0
             )

    assert r == :cancelled
  end

  test "a NaN or infinity float on the wire is an error, as binary_to_term has it" do
    for bits <- [<<0x7FF8::16, 0::48>>, <<0x7FF0::16, 0::48>>] do
      frame = <<131, 104, 4, 119, 5, "reply", 97, 1, 119, 2, "ok", 70>> <> bits
      assert {:error, %Snakeport.Error{reason: :unsafe_term}} = Protocol.decode_reply(frame, 0)
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
      assert {:ok, ^value} = Protocol.decode_reply(reply(value), 0)
    end
  end
end
