defmodule Snakeport.TrailingBytesTest do
  # Issue 13, item 6 (harness side): a frame from the worker is exactly one term. A fake
  # worker (test/python/fake_trailing) answers through a real Port with frames that carry
  # bytes after their term, such as the one a list grown while it was encoded made (its
  # header said 2 elements and 3 followed): binary_to_term/2 without :used decoded it to
  # the improper list [1, 2 | 3]. Each such reply is now the caller's :protocol_error, and
  # such an event a protocol_error event, never a value.
  use Snakeport.Case, async: true

  @moduletag snakeport: [python_path: [Path.expand("../python/fake_trailing", __DIR__)]]

  test "a reply frame with trailing bytes is a protocol error, never a wrong value" do
    for function <- ["trailing_list", "trailing_int", "trailing_binary", "trailing_error"] do
      assert {:error, %Error{reason: :protocol_error, message: message}} =
               Snakeport.call("fake", function, [], instance: @instance)

      assert message =~ "malformed reply from the worker"
      assert message =~ "followed by 1 bytes that are not part of it"
    end

    # The same worker's exact frames still decode.
    assert {:ok, "exact"} = Snakeport.call("fake", "exact", [], instance: @instance)
  end

  test "an event frame with trailing bytes is a protocol error, not an event" do
    capture_events(
      [[:snakeport, :worker, :warning], [:snakeport, :worker, :protocol_error]],
      @instance
    )

    ExUnit.CaptureLog.capture_log(fn ->
      # The event comes before the reply on the same port: it is handled first.
      assert {:ok, 1} = Snakeport.call("fake", "trailing_event", [], instance: @instance)
    end)

    assert_received {:event, [:snakeport, :worker, :protocol_error], _,
                     %{reason: :malformed_event, source: :harness, message: message}}

    assert message =~ "followed by 1 bytes"
    refute_received {:event, [:snakeport, :worker, :warning], _, _}
  end
end
