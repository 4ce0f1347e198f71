defmodule Snakeport.Application do
  @moduledoc false
  # The OTP application only runs a supervisor that owns the telemetry handler table (so
  # that handlers survive restarts of Snakeport itself). The harness proper - workers,
  # sessions - starts where the user puts `{Snakeport, opts}` in a supervision tree.
  use Application
  @behaviour Supervisor

  @impl Application
  def start(_type, _args) do
    Supervisor.start_link(__MODULE__, [], name: Snakeport.Application.Supervisor)
  end

  @impl Supervisor
  def init([]) do
    # Runs in the supervisor process, which therefore owns the table.
    :ok = Snakeport.Telemetry.create_table()
    # Load the protocol module now: its atom list must exist before any frame is decoded.
    {:module, _} = Code.ensure_loaded(Snakeport.Protocol)
    Supervisor.init([], strategy: :one_for_one)
  end
end
