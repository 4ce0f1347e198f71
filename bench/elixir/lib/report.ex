defmodule Bench.Report do
  @moduledoc """
  Writes bench/RESULTS.md from the runs of bench.exs (one per regime: 2 vCPUs, and both
  processes pinned to one CPU) and the codec benchmark's output.
  """

  import Bench.Stats, only: [median: 1]

  # {figure, key, floor key (or nil), unit, targets}. Targets:
  #   {:ratio_min, x}  the median over the rounds of Snakeport ÷ floor is at least x;
  #   {:paired_min, x} (the A/B rows, default vs alternative, and the array vs lists row) the
  #                    median of the ratios of the pairs of blocks of every round (key
  #                    `<key>_pairs`) is at least x;
  #   {:py_max, x}     the median of Snakeport's worker CPU per unit ÷ the floor's Python CPU
  #                    per unit is at most x; {:beam_max, x} the same for the BEAM's CPU;
  #   {:max, x}        the median figure is below x.
  # A target is met only when it holds in every regime of the run.
  @rows [
    {"1. Sequential `call(\"operator\", \"add\", [1, 2])`", :seq, :seq_floor, "calls/s",
     [{:ratio_min, 0.6}, {:py_max, 2.5}]},
    {"1. Sequential latency p50", :seq_p50, :seq_p50_floor, "µs", []},
    {"1. Sequential latency p99", :seq_p99, :seq_p99_floor, "µs", []},
    {"2. 64 callers, one worker (floor: routed callers)", :c64, :c64_floor, "calls/s",
     [{:ratio_min, 0.3}, {:py_max, 3.0}, {:beam_max, 3.0}]},
    {"2. 64 callers, one worker, vs the pipelined floor window", :c64, :c64_window, "calls/s", []},
    {"2. 64 callers, default pool", :pool, :pool_floor, "calls/s", []},
    {"3. 1 MiB binary echo", :echo1, :echo1_floor, "MiB/s", [{:ratio_min, 1.5}]},
    # The reach of the row above: the floor's echo with the worker's pipes (no decoding, no
    # threads; floor_echo.py with FLOOR_PIPE_BYTES), and Snakeport against it.
    {"3. 1 MiB echo of the floor with 1 MiB pipes (first column) vs with its default pipes",
     :echo1_wide, :echo1_floor, "MiB/s", []},
    {"3. 1 MiB binary echo vs the floor with 1 MiB pipes", :echo1, :echo1_wide, "MiB/s", []},
    {"3. 16 MiB binary echo", :echo16, :echo16_floor, "MiB/s", []},
    {"Default polling vs the alternative: sequential", :seq_def, :seq_alt, "calls/s",
     [{:paired_min, 0.95}]},
    {"Default polling vs the alternative: 64 callers", :c64_def, :c64_alt, "calls/s",
     [{:paired_min, 0.95}]},
    {"Default polling vs the alternative: 1 MiB echo", :echo1_def, :echo1_alt, "MiB/s",
     [{:paired_min, 0.95}]},
    {"Default polling vs the alternative: ref churn", :churn_def, :churn_alt, "refs/s",
     [{:paired_min, 0.95}]},
    {"Default batch waits vs none: sequential", :seq_bdef, :seq_boff, "calls/s",
     [{:paired_min, 0.95}]},
    {"Default batch waits vs none: 64 callers", :c64_bdef, :c64_boff, "calls/s",
     [{:paired_min, 0.95}]},
    {"4. Ref churn: create + method + release", :churn, nil, "refs/s", []},
    {"4. 10k refs: owner killed → stats refs 0", :release_ms, nil, "ms", [{:max, 50}]},
    {"5. Cold start: Port open → ready frame", :cold_ready, :cold_floor, "ms", []},
    {"5. Cold start: Port open → first `ping` reply", :cold_ping, :cold_floor, "ms", [{:max, 150}]},
    {"5. `python -c pass` (Port open → exit)", :cold_pass, :cold_floor, "ms", []},
    {"5. `Snakeport.start_link(pool_size: 1)` → first call reply", :api_start, :cold_floor, "ms",
     []},
    {"5. Worker RSS idle", :rss_idle, nil, "MB", [{:max, 30}]},
    {"5. Worker RSS holding 10k refs", :rss_refs, nil, "MB", []},
    {"7. 8 MiB float64 `%Snakeport.Array{}` round trip (MiB one way), vs the 16 MiB echo floor",
     :array8, :echo16_floor, "MiB/s", [{:ratio_min, 0.7}]},
    {"7. The same 8 MiB array vs the same values as lists (the `.tolist()` path)", :array8, :list8,
     "MiB/s", [{:paired_min, 20}]},
    {"7. `predict` on 1,000 rows of a fitted LinearRegression (8 features): arrays vs lists",
     :predict_arrays, :predict_lists, "calls/s", []},
    {"8. `range(10**6)` as a `Snakeport.stream/4` (floor: the same as one list result)", :stream,
     :stream_list, "items/s", [{:ratio_min, 0.5}]}
  ]

  @doc "The codec benchmark's output and its request+reply figure (nil when not given)."
  def codec(nil), do: nil

  def codec(path) do
    with {:ok, text} <- File.read(path) do
      # One line per implementation ("[C]", "[Python]"); the table takes the C accelerator's
      # when it was built, as the worker uses it then.
      rows =
        Regex.scan(
          ~r/decode request \+ encode reply \[(\w+)\]\s+([\d.]+) us\s+\(median\s+([\d.]+) us\)/,
          text
        )
        |> Map.new(fn [_, impl, best, med] ->
          {impl, %{impl: impl, best: String.to_float(best), median: String.to_float(med)}}
        end)

      case rows["C"] || rows["Python"] do
        nil -> %{text: text}
        row -> Map.put(row, :text, text)
      end
    else
      _ -> nil
    end
  end

  @doc "Writes RESULTS.md from `runs` (each `%{meta: map, rounds: [figures]}`) and `codec`."
  def write(path, runs, codec) do
    File.write!(path, [
      header(runs),
      targets(runs, codec),
      Enum.map(runs, &table/1),
      Enum.map(runs, &per_round/1),
      codec_section(codec)
    ])
  end

  defp header([first | _] = runs) do
    m = first.meta
    cpu = cpu_model()
    {uname, 0} = System.cmd("uname", ["-a"])

    """
    # Snakeport benchmark results

    Generated by `#{System.get_env("BENCH_COMMAND", "mix run bench.exs")}` (bench/elixir/bench.exs,
    report.exs and bench/bench_codec.py); do not edit by hand. How to read it and what is
    measured: bench/README.md; what bounds each figure: bench/PROFILE.md.

    | | |
    |---|---|
    | date | #{m.date} |
    | machine | `#{String.trim(uname)}` |
    | CPU | #{cpu}, #{:erlang.system_info(:logical_processors_available)} logical CPUs available to this report |
    | Python | #{m.python} (snakeport #{m.snakeport}) |
    | Erlang/OTP | #{System.otp_release()} (ERTS #{:erlang.system_info(:version)}), Elixir #{System.version()} |
    | worker polling | default `spin_us` #{m.spin_default}, alternative #{m.spin_alternative} |
    | worker C fast path | #{fast_path(Enum.map(runs, &Map.get(&1.meta, :fast_path)))} |

    | regime | rounds | suite | schedulers | BEAM CPUs | worker CPUs | load before / after | Python loop (ms) | Erlang loop (ms) |
    |---|---:|---:|---:|---|---|---|---:|---:|
    #{Enum.map_join(runs, "\n", &regime_row/1)}

    Machine reference: the best of 5 runs of `x += i for i in range(10**6)` in the worker's
    interpreter, and of a tail-recursive sum of 10^7 integers in the VM, in each regime.

    """
  end

  defp regime_row(%{meta: m}) do
    "| #{m.regime} | #{m.rounds} | #{m.suite_s} s | #{m.schedulers} | #{m.beam_cpus} | " <>
      "#{m.worker_cpus} | #{m.load_before} / #{m.load_after} | " <>
      "#{Float.round(m.reference.python_loop_ms, 1)} | #{Float.round(m.reference.erlang_loop_ms, 1)} |"
  end

  # Whether the workers ran plain calls on their C lane (`fast_path` of Snakeport.stats/1),
  # in every regime: without it every call row measures the general path.
  defp fast_path(flags) do
    cond do
      Enum.all?(flags, &(&1 == true)) ->
        "on (`stats`: `fast_path: true` in every regime)"

      Enum.all?(flags, &is_nil/1) ->
        "not recorded"

      true ->
        "**off in some regime** (`fast_path`: #{inspect(flags)}): the call rows measure the general path"
    end
  end

  defp cpu_model do
    File.read!("/proc/cpuinfo")
    |> String.split("\n")
    |> Enum.find_value(
      "unknown",
      &(String.starts_with?(&1, "model name") &&
          &1 |> String.split(":", parts: 2) |> List.last() |> String.trim())
    )
  end

  # The targets, each with its measured value per regime; met only if met in every regime.
  defp targets(runs, codec) do
    rows =
      for {label, key, floor_key, unit, targets} <- @rows, target <- targets do
        per_run = Enum.map(runs, &check(&1.rounds, key, floor_key, unit, target))
        met = Enum.all?(per_run, &elem(&1, 1))

        "| #{label} | #{target_text(target)} | " <>
          Enum.map_join(per_run, " | ", fn {text, ok} -> "#{text}#{if ok, do: "", else: " ✗"}" end) <>
          " | #{met(met)} |\n"
      end

    codec_row =
      case codec do
        %{median: med, impl: impl} ->
          "| 6. Codec [#{impl}]: decode request + encode reply (median of its rounds) | < 3.0 µs | " <>
            Enum.map_join(runs, " | ", fn _ -> "#{med} µs (one run)" end) <>
            " | #{met(med < 3.0)} |\n"

        _ ->
          ""
      end

    [
      "## Targets\n\n",
      "Each target compares the median over the rounds (of the per-round ratio, for ratios; ",
      "for paired blocks, of the ratios of the pairs of blocks of all rounds); ",
      "a target counts as met only if it holds in every regime (✗ marks a regime where it ",
      "does not).\n\n",
      "| figure | target | ",
      Enum.map_join(runs, " | ", & &1.meta.regime),
      " | |\n|---|---|",
      String.duplicate("---:|", length(runs)),
      "---|\n",
      rows,
      codec_row,
      "\n"
    ]
  end

  defp check(rounds, key, floor_key, unit, {:ratio_min, x}) do
    r = ratio(rounds, key, floor_key)

    {"#{fmt_ratio(r)} (#{fmt(med(rounds, key), unit)} vs #{fmt(med(rounds, floor_key), unit)})",
     r >= x}
  end

  defp check(rounds, key, floor_key, unit, {:paired_min, x}) do
    pairs = pairs(rounds, key)
    r = median(pairs)
    sorted = Enum.sort(pairs)
    q1 = Bench.Stats.percentile(sorted, 0.25)
    q3 = Bench.Stats.percentile(sorted, 0.75)

    {"#{fmt_ratio(r)} (#{length(pairs)} pairs, middle half #{fmt_ratio(q1)}-#{fmt_ratio(q3)}; " <>
       "#{fmt(med(rounds, key), unit)} vs #{fmt(med(rounds, floor_key), unit)})", r >= x}
  end

  defp check(rounds, key, floor_key, _unit, {side, x}) when side in [:py_max, :beam_max] do
    suffix = if side == :py_max, do: "_py", else: "_beam"
    k = :"#{key}#{suffix}"
    f = :"#{floor_key}#{suffix}"
    r = ratio(rounds, k, f)
    {"#{fmt_ratio(r)} (#{fmt_cpu(med(rounds, k))} vs #{fmt_cpu(med(rounds, f))} µs)", r <= x}
  end

  defp check(rounds, key, _floor_key, unit, {:max, x}) do
    v = med(rounds, key)
    {fmt(v, unit), v < x}
  end

  defp target_text({:ratio_min, x}), do: "≥ #{x}x"
  defp target_text({:paired_min, x}), do: "≥ #{x}x (paired blocks)"
  defp target_text({:py_max, x}), do: "worker CPU/call ≤ #{x}x the floor's"
  defp target_text({:beam_max, x}), do: "BEAM CPU/call ≤ #{x}x the floor's"
  defp target_text({:max, x}), do: "< #{x}"

  defp med(rounds, key), do: median(Enum.map(rounds, &Map.fetch!(&1, key)))

  defp ratio(rounds, key, floor_key), do: median(Enum.map(rounds, &(&1[key] / &1[floor_key])))

  defp pairs(rounds, key), do: Enum.flat_map(rounds, &Map.fetch!(&1, :"#{key}_pairs"))

  defp table(%{meta: m, rounds: rounds}) do
    rows =
      for {label, key, floor_key, unit, targets} <- @rows do
        {floor, ratio} =
          cond do
            floor_key == nil ->
              {"—", "—"}

            Enum.any?(targets, &match?({:paired_min, _}, &1)) ->
              {fmt(med(rounds, floor_key), unit), fmt_ratio(median(pairs(rounds, key)))}

            true ->
              {fmt(med(rounds, floor_key), unit), fmt_ratio(ratio(rounds, key, floor_key))}
          end

        "| #{label} | #{fmt(med(rounds, key), unit)} | #{cpu(rounds, key)} | #{floor} | " <>
          "#{if floor_key, do: cpu(rounds, floor_key), else: "—"} | #{ratio} |\n"
      end

    [
      "## #{m.regime}\n\n",
      "Medians over #{m.rounds} rounds; ratio = median over the rounds of Snakeport ÷ floor of ",
      "the same round (for the default-vs-alternative rows and arrays vs lists: median of the ",
      "ratios of the pairs of blocks of all rounds). CPU: µs per unit of the rate (per call, per MiB, per item, per ref) ",
      "spent by the Python side (the worker, or the floor's echo) / by the BEAM, measured over ",
      "the same block.\n\n",
      "| figure | Snakeport | CPU µs/unit worker / BEAM | floor | floor CPU µs/unit Python / BEAM | ratio |\n",
      "|---|---:|---:|---:|---:|---:|\n",
      rows,
      "\n"
    ]
  end

  defp cpu(rounds, key) do
    if Map.has_key?(hd(rounds), :"#{key}_py"),
      do: "#{fmt_cpu(med(rounds, :"#{key}_py"))} / #{fmt_cpu(med(rounds, :"#{key}_beam"))}",
      else: "—"
  end

  defp per_round(%{meta: m, rounds: rounds}) do
    keys = rounds |> hd() |> Map.keys() |> Enum.sort()

    [
      "## Every round: #{m.regime}\n\n",
      "Keys ending in `_py` / `_beam`: CPU µs per unit of the figure without the suffix; ",
      "in `_pairs`: the median of the round's pair ratios (and how many pairs). ",
      "Counts per round: #{m.counts}.\n\n",
      "| key | ",
      Enum.map_join(1..length(rounds), " | ", &"round #{&1}"),
      " |\n|---|",
      String.duplicate("---:|", length(rounds)),
      "\n",
      for key <- keys do
        "| #{key} | " <> Enum.map_join(rounds, " | ", &fmt_key(key, &1[key])) <> " |\n"
      end,
      "\n"
    ]
  end

  defp fmt_key(key, value) do
    name = Atom.to_string(key)

    cond do
      is_list(value) -> "#{fmt_ratio(median(value))} (#{length(value)})"
      String.ends_with?(name, "_py") or String.ends_with?(name, "_beam") -> fmt_cpu(value)
      true -> fmt(value, unit_of_key(name))
    end
  end

  defp unit_of_key(name) do
    cond do
      String.starts_with?(name, "rss") ->
        "MB"

      String.contains?(name, "p50") or String.contains?(name, "p99") ->
        "µs"

      String.starts_with?(name, "cold") or name in ["api_start", "release_ms"] ->
        "ms"

      String.starts_with?(name, "echo") or String.starts_with?(name, "array8") or
          String.starts_with?(name, "list8") ->
        "MiB/s"

      true ->
        "/s"
    end
  end

  defp fmt(value, unit) when unit in ["µs", "ms", "MiB/s", "MB"],
    do: "#{Float.round(value * 1.0, 1)} #{unit}"

  defp fmt(value, unit), do: "#{round(value)} #{unit}"

  defp fmt_cpu(v) when v >= 100, do: "#{round(v)}"
  defp fmt_cpu(v) when v >= 1, do: "#{Float.round(v * 1.0, 1)}"
  defp fmt_cpu(v), do: "#{Float.round(v * 1.0, 3)}"

  defp fmt_ratio(r), do: "#{Float.round(r * 1.0, 2)}x"

  defp met(true), do: "met"
  defp met(false), do: "**missed**"

  defp codec_section(%{text: text}),
    do: ["## Codec benchmark (`bench/bench_codec.py`, output as printed)\n\n```\n", text, "```\n"]

  defp codec_section(_), do: "## Codec benchmark\n\nNot run (no output file given).\n"
end
