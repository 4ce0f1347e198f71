defmodule SnakeportBench.MixProject do
  use Mix.Project

  # The benchmark suite of Snakeport: `mix run bench.exs` (see ../README.md). No Hex.
  def project do
    [
      app: :snakeport_bench,
      version: "0.1.0",
      elixir: "~> 1.14",
      deps: [{:snakeport, path: "../../elixir_harness"}]
    ]
  end

  def application, do: [extra_applications: [:logger]]
end
