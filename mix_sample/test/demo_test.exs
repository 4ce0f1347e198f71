defmodule MixSample.DemoTest do
  use ExUnit.Case, async: false
  import ExUnit.CaptureIO

  test "MixSample.run/0 goes through all four parts against the real worker" do
    output = capture_io(fn -> assert :ok = MixSample.run() end)

    for heading <- [
          "1. Auto-session",
          "2. Shared session",
          "3. Releasing",
          "4. Owner death",
          "Done"
        ] do
      assert output =~ heading
    end

    assert output =~ "[1.0, 3.0, 6.0]"
    assert output =~ ":ref_released"
    assert output =~ "%{reason: :owner_down}"
    assert output =~ ~r/Python: refs held by the worker.*=> 0/
    assert output =~ ~r/live_models\(\)\s+=> 0/
  end
end
