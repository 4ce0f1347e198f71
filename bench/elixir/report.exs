# Writes bench/RESULTS.md from the runs that bench.exs saved (`--save`), one per regime, and
# the codec benchmark's output: `mix run report.exs [--codec CODEC_OUTPUT] --out RESULTS.md
# RUN...` (run by `make bench`).

{args, files, _} = OptionParser.parse(System.argv(), strict: [codec: :string, out: :string])
out = args[:out] || Path.expand("../RESULTS.md", __DIR__)
runs = Enum.map(files, &(&1 |> File.read!() |> :erlang.binary_to_term()))
if runs == [], do: raise("no runs given (files saved by bench.exs --save)")
Bench.Report.write(out, runs, Bench.Report.codec(args[:codec]))
IO.puts(out |> File.read!() |> String.split("\n## ") |> Enum.take(2) |> Enum.join("\n## "))
IO.puts("wrote #{out}")
