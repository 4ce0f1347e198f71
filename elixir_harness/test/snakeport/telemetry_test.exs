defmodule Snakeport.TelemetryTest do
  # async: false - these tests look at the global handler table (whether anything listens
  # to an event at all), which the async modules' handlers would change under them.
  use Snakeport.Case, async: false

  import ExUnit.CaptureLog

  test "a call event handler attached to one event only gets it; detached, nothing" do
    me = self()
    handler = fn event, m, meta, _ -> send(me, {:only_stop, event, m, meta}) end
    :ok = Snakeport.Telemetry.attach("only-stop", [:snakeport, :call, :stop], handler)
    assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
    assert_receive {:only_stop, [:snakeport, :call, :stop], %{duration: d}, %{op: :call}}
    assert is_integer(d)
    :ok = Snakeport.Telemetry.detach("only-stop")
    assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
    refute_received {:only_stop, _, _, _}
    refute Snakeport.Telemetry.listening?([:snakeport, :call])
  end

  test "a handler that raises is detached and logged" do
    parent = self()

    :ok =
      Snakeport.Telemetry.attach(:bad_handler, [:snakeport, :test, :event], fn _, _, _, _ ->
        send(parent, :called)
        raise "handler bug"
      end)

    log =
      capture_log(fn -> Snakeport.Telemetry.execute([:snakeport, :test, :event], %{}, %{}) end)

    assert_received :called
    assert log =~ "handler bug"
    assert Snakeport.Telemetry.list_handlers([:snakeport, :test]) == []
    Snakeport.Telemetry.execute([:snakeport, :test, :event], %{}, %{})
    refute_received :called
    assert {:error, :not_found} = Snakeport.Telemetry.detach(:bad_handler)
  end
end
