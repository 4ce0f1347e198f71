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
      package: package(),
      docs: [main: "Snakeport", extras: ["README.md"]]
    ]
  end

  def application do
    [
      extra_applications: [:logger],
      mod: {Snakeport.Application, []}
    ]
  end

  # priv/snakeport_worker is the worker's Python distribution (symlinks into the repository):
  # a package must be built from a copy with the links followed (README.md, *How the worker
  # travels with the harness*). priv/venv, a release's copy of the virtualenv, never goes in.
  defp package do
    [
      licenses: ["Apache-2.0"],
      links: %{},
      files: ["lib", "priv/snakeport_worker", "mix.exs", "README.md", ".formatter.exs"]
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
