defmodule MixSample.MixProject do
  use Mix.Project

  def project do
    [
      app: :mix_sample,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: deps(),
      aliases: aliases()
    ]
  end

  def application do
    [
      extra_applications: [:logger],
      mod: {MixSample.Application, []}
    ]
  end

  # The only dependency: the Snakeport harness, used the way a user's app would.
  defp deps do
    [
      {:snakeport, path: "../elixir_harness"}
    ]
  end

  # `mix demo` is a shortcut for `mix run demo.exs`.
  defp aliases do
    [
      demo: ["run demo.exs"]
    ]
  end
end
