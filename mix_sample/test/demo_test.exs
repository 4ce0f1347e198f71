defmodule MixSample.DemoTest do
  use ExUnit.Case, async: false
  import ExUnit.CaptureIO

  test "MixSample.run/0 goes through all five parts against the real worker" do
    output = capture_io(fn -> assert :ok = MixSample.run() end)

    for heading <- [
          "1. Auto-session",
          "2. Shared session",
          "3. Releasing",
          "4. Owner death",
          "5. A second instance",
          "Done"
        ] do
      assert output =~ heading
    end

    assert output =~ "[1.0, 3.0, 6.0]"
    assert output =~ ":ref_released"
    assert output =~ "%{reason: :owner_down}"
    assert output =~ ~r/Python: refs held by the worker.*=> 0/
    assert output =~ ~r/live_models\(\)\s+=> 0/
    assert output =~ ~r/MixSample.Threaded: worker threads, OS pid\s+=> \{4, \d+\}/
    assert output =~ ~r/the ref used with instance: Snakeport\s+=> \{:error, :instance_mismatch\}/
    assert output =~ ~r/release_session \(MixSample.Threaded\)\s+=> \{:ok, 1\}/
  end
end
