defmodule Snakeport.ProtocolDecodeTest do
  use ExUnit.Case, async: true

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
