defmodule MixSample.DemoTest do
  use ExUnit.Case, async: false
  import ExUnit.CaptureIO

  test "MixSample.run/0 goes through all six parts against the real worker" do
    output = capture_io(fn -> assert :ok = MixSample.run() end)

    for heading <- [
          "1. Auto-session",
          "2. Shared session",
          "3. Releasing",
          "4. Owner death",
          "5. A second instance",
          "6. numpy, pandas and scikit-learn",
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
    assert output =~ ~r/pandas: df.mean\(\)\s+=> #Snakeport.Ref<pandas.Series/
    assert output =~ ~r/Snakeport.Series.to_list\/1\s+=> \[\{0, 2.0\}\]/
    assert output =~ ~r/model.predict\(\[\[3.0\], \[4.0\]\]\) \(one call\)\s+=> \[7.0, 9.0\]/
    assert output =~ ~r/model.coef_, model.intercept_\s+=> \{\[2.0\], 1.0\}/
  end
end
