defmodule Snakeport.ProtocolAtomsTest do
  # Worker frames are decoded with binary_to_term(_, [:safe]): every atom the worker emits on
  # its own must exist before its first frame arrives. docs/PROTOCOL.md lists them ("Atoms the
  # worker emits"); the worker's tests check the worker against that list, these check the
  # harness, so the three cannot drift apart.
  use ExUnit.Case, async: true

  @protocol_md Path.expand("../../../docs/PROTOCOL.md", __DIR__)

  # The atoms of the section's ```text block: one "label: atom atom ..." line per group.
  defp doc_atoms do
    text = File.read!(@protocol_md)
    assert [_, rest] = String.split(text, "\n## Atoms the worker emits\n", parts: 2)
    [section | _] = String.split(rest, "\n## ", parts: 2)
    assert [_, block] = Regex.run(~r/```text\n(.*?)```/s, section)

    block
    |> String.split("\n", trim: true)
    |> Enum.flat_map(fn line ->
      assert [_label, names] = String.split(line, ":", parts: 2)
      String.split(names)
    end)
    |> Enum.uniq()
  end

  test "the section lists the worker's atoms" do
    atoms = doc_atoms()
    assert length(atoms) > 50

    for name <- ["snakeport_ready", "reply", "session_not_found", "$snakeport_ref", "running"] do
      assert name in atoms
    end
  end

  test "every atom the worker emits is in the harness's atom list, hence exists" do
    known = MapSet.new(Snakeport.Protocol.atoms(), &Atom.to_string/1)
    assert Enum.reject(doc_atoms(), &MapSet.member?(known, &1)) == []

    for name <- doc_atoms() do
      assert is_atom(String.to_existing_atom(name))
    end
  end

  test "in a fresh VM, starting the harness application creates every atom the worker emits" do
    # No test code loaded there: only the harness can have created the atoms.
    elixir = System.find_executable("elixir") || flunk("elixir is not on PATH")

    script = """
    {:ok, _} = Application.ensure_all_started(String.to_atom(System.fetch_env!("APP")))

    missing =
      for name <- String.split(System.fetch_env!("ATOMS")),
          match?({:error, _}, (try do {:ok, String.to_existing_atom(name)} rescue e -> {:error, e} end)),
          do: name

    IO.puts("missing: " <> Enum.join(missing, " "))
    """

    {out, status} =
      System.cmd(elixir, ["-pa", Application.app_dir(:snakeport, "ebin"), "-e", script],
        env: [{"APP", "snakeport"}, {"ATOMS", Enum.join(doc_atoms(), " ")}],
        stderr_to_stdout: true
      )

    assert status == 0, out
    assert out =~ ~r/^missing: $/m, out
  end
end
