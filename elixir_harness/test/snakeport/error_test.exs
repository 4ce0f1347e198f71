defmodule Snakeport.ErrorTest do
  use ExUnit.Case, async: true

  @lib Path.expand("../../lib", __DIR__)

  # Before, the harness returned :bad_argument errors that Snakeport.Error did not document.
  test "every reason the harness gives an error is documented in Snakeport.Error" do
    created =
      for path <- Path.wildcard(Path.join(@lib, "**/*.ex")),
          [_, reason] <- Regex.scan(~r/Error\.new\(\s*:(\w+)/, File.read!(path)),
          uniq: true,
          do: reason

    assert length(created) > 10
    {:docs_v1, _, :elixir, _, %{"en" => moduledoc}, _, _} = Code.fetch_docs(Snakeport.Error)
    assert Enum.reject(created, &(moduledoc =~ "`:#{&1}`")) == []
  end
end
