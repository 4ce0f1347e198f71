defmodule Snakeport.ValuesTest do
  # The value structs' own functions (doctests) and the wire <-> Elixir translation of
  # Snakeport.Values on frames made by the real VM codec: what a malformed tagged term from
  # the worker gives, how blobs are cut from a frame.
  use ExUnit.Case, async: true

  alias Snakeport.{Array, Protocol}

  doctest Snakeport.Array
  doctest Snakeport.DataFrame
  doctest Snakeport.Series
  doctest Snakeport.Index
  doctest Snakeport.Duration
  doctest Snakeport.Decimal
  doctest Snakeport.UUID
  doctest Snakeport.Extension
  doctest Snakeport.Arrow

  defp reply(value, tail \\ <<>>), do: :erlang.term_to_binary({:reply, 1, :ok, value}) <> tail

  describe "Array" do
    test "from_list/2 and to_list/1 for every type, NaN and infinities included" do
      for {list, type} <- [
            {[-128, 127], {:s, 8}},
            {[-32_768, 32_767], {:s, 16}},
            {[-2_147_483_648, 1], {:s, 32}},
            {[-9_223_372_036_854_775_808, 9_223_372_036_854_775_807], {:s, 64}},
            {[0, 255], {:u, 8}},
            {[65_535], {:u, 16}},
            {[4_294_967_295], {:u, 32}},
            {[18_446_744_073_709_551_615], {:u, 64}},
            {[0.5, -2.0, :nan, :infinity, :neg_infinity], {:f, 16}},
            {[0.25, :nan, :infinity, :neg_infinity], {:f, 32}},
            {[1.0e300, :nan, :infinity, :neg_infinity], {:f, 64}},
            {[{1.0, -1.0}, {:nan, :infinity}], {:c, 64}},
            {[[{0.5, 0.0}]], {:c, 128}},
            {[[[]], [[]]], {:s, 32}},
            {3.5, {:f, 64}}
          ] do
        assert Array.from_list(list, type) |> Array.to_list() == list, inspect({list, type})
      end

      assert Array.from_list([[true], [false]], :bool) |> Array.to_list() == [[true], [false]]
    end

    test "shapes: nested lists give theirs; ragged lists and bad elements raise" do
      assert Array.from_list([[[1], [2]], [[3], [4]]], {:u, 8}).shape == {2, 2, 1}
      assert Array.from_list([[], []], {:u, 8}).shape == {2, 0}

      assert_raise ArgumentError, ~r/equal lengths/, fn ->
        Array.from_list([[1], [2, 3]], {:u, 8})
      end

      assert_raise ArgumentError, ~r/equal lengths/, fn -> Array.from_list([1, [2]], {:u, 8}) end
      assert_raise ArgumentError, ~r/does not fit/, fn -> Array.from_list([256], {:u, 8}) end
      assert_raise ArgumentError, ~r/does not fit/, fn -> Array.from_list([1.5], {:s, 32}) end
      assert_raise ArgumentError, ~r/Nx type/, fn -> Array.from_list([1], {:f, 8}) end
      assert_raise ArgumentError, ~r/booleans/, fn -> Array.from_list([1], :bool) end
      assert_raise ArgumentError, ~r/needs 8/, fn -> Array.new(<<1>>, {:f, 64}, {1}) end
      assert_raise ArgumentError, ~r/:shape/, fn -> Array.new(<<>>, {:f, 64}, [0]) end
    end
  end

  describe "replies from the worker" do
    test "blobs are sub-binaries of the frame, at their offsets after the term" do
      a = :binary.copy(<<1>>, 70_000)
      b = :binary.copy(<<2>>, 8)

      value = [
        {:"$snakeport_array", {:u, 8}, {70_000}, {:"$snakeport_blob", 8, 70_000}, nil},
        {:"$snakeport_array", {:u, 8}, {8}, {:"$snakeport_blob", 0, 8}, nil}
      ]

      frame = reply(value, b <> a)

      assert {:ok, [%Array{data: ^a}, %Array{data: ^b}]} =
               Protocol.decode_reply(frame, Snakeport, 0)
    end

    test "malformed tagged terms are protocol errors, never values" do
      for value <- [
            {:"$snakeport_array", {:f, 64}, {2}, <<0::64>>, nil},
            {:"$snakeport_array", {:f, 64}, {1}, {:"$snakeport_blob", 0, 8}, nil},
            {:"$snakeport_array", {:q, 64}, {1}, <<0::64>>, nil},
            {:"$snakeport_date", 2024, 2, 30},
            {:"$snakeport_time", 25, 0, 0, 0},
            {:"$snakeport_datetime", 2024, 1, 1, 0, 0, 0, 0, {1, 2}},
            {:"$snakeport_timedelta", 1.5},
            {:"$snakeport_decimal", 0, 1, 0},
            {:"$snakeport_range", 0, 1, 0},
            {:"$snakeport_dataframe", ["a"], :not_an_index, []},
            {:"$snakeport_uuid"},
            [{:"$snakeport_ext", 1, 2}]
          ] do
        assert {:error, %Snakeport.Error{reason: :protocol_error, message: message}} =
                 Protocol.decode_reply(reply(value), Snakeport, 0),
               inspect(value)

        assert message =~ "malformed"
      end
    end

    test "bytes after a term that refers to no blob make the frame malformed" do
      assert {:error, %Snakeport.Error{reason: :protocol_error, message: message}} =
               Protocol.decode_reply(reply([1, 2], "junk"), Snakeport, 0)

      assert message =~ "followed by 4 bytes that are not part of it"
      assert {:ok, [1, 2]} = Protocol.decode_reply(reply([1, 2]), Snakeport, 0)
    end

    test "ranges: Python's bounds become Elixir's" do
      for {start, stop, step, range} <- [
            {0, 5, 1, 0..4//1},
            {1, 10, 3, 1..7//3},
            {10, -3, -4, 10..-2//-4},
            {3, 3, 1, 3..2//1},
            {5, 0, 2, 5..4//2},
            {0, 5, -1, 0..1//-1}
          ] do
        assert {:ok, ^range} =
                 Protocol.decode_reply(
                   reply({:"$snakeport_range", start, stop, step}),
                   Snakeport,
                   0
                 )

        # The same elements as Python's range(start, stop, step).
        python =
          Stream.iterate(start, &(&1 + step))
          |> Enum.take_while(&if(step > 0, do: &1 < stop, else: &1 > stop))

        assert Enum.to_list(range) == python
      end
    end
  end

  describe "requests to the worker" do
    test "large array data leaves as blobs after the term, never inside it" do
      big = :binary.copy(<<7>>, 65_536)
      array = Array.new(big, {:u, 8}, {65_536})
      small = Array.from_list([1, 2], {:u, 8})

      assert {:ok, wire, nil, [^big, ^big]} =
               Protocol.to_wire([array, small, %{k: array}], Snakeport)

      assert [
               {:"$snakeport_array", {:u, 8}, {65_536}, {:"$snakeport_blob", 0, 65_536}, nil},
               {:"$snakeport_array", {:u, 8}, {2}, <<1, 2>>, nil},
               %{
                 k:
                   {:"$snakeport_array", {:u, 8}, {65_536}, {:"$snakeport_blob", 65_536, 65_536},
                    nil}
               }
             ] = wire

      request = Protocol.call("m", "f", wire, %{}, %{}) |> Protocol.with_blobs([big, big])
      frame = IO.iodata_to_binary(Protocol.encode(request, 9, "s"))
      {term, used} = :erlang.binary_to_term(frame, [:used])
      assert elem(term, 1) == 9 and byte_size(frame) - used == 2 * 65_536
    end
  end
end
