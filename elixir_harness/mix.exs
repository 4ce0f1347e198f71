defmodule Snakeport.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :snakeport,
      version: @version,
      elixir: "~> 1.14",
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      # No dependencies at all: the harness needs nothing beyond Elixir and OTP.
      deps: [],
      description: "Call Python from Elixir through a supervised pool of Port workers",
      docs: [main: "Snakeport", extras: ["README.md"]]
    ]
  end

  def application do
    [
      extra_applications: [:logger],
      mod: {Snakeport.Application, []}
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
