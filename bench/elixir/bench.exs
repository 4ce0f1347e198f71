# The Snakeport benchmark suite: `mix run bench.exs [--codec CODEC_OUTPUT] [--out RESULTS.md]`
# (run by `make bench`). Every round measures the floor (bench/floor_echo.py behind a Port)
# and Snakeport back to back; bench/RESULTS.md gets the medians and the per-round ratios.
# Environment: SNAKEPORT_PYTHON (interpreter with the worker), BENCH_ROUNDS (default 7).

alias Bench.{Floor, Snake, Stats}

{args, _, _} = OptionParser.parse(System.argv(), strict: [codec: :string, out: :string])
out = args[:out] || Path.expand("../RESULTS.md", __DIR__)
python = System.get_env("SNAKEPORT_PYTHON") || Path.expand("../../.venv/bin/python", __DIR__)
rounds = max(3, String.to_integer(System.get_env("BENCH_ROUNDS", "7")))

# Counts per round. Each measurement is one steady block per side (floor, then Snakeport),
# after an untimed warm-up block of its own: short alternating batches would let one side
# run on CPUs that the other one has just woken up (see README.md, "Noise"). Blocks last
# about 0.1-0.5 s: shorter ones (30 ms for the 1 MiB echo) let one hiccup of the machine
# move a round's ratio by 20%.
n = %{
  seq: 10_000,
  callers: 64,
  per_caller: 600,
  floor_per_caller: 2_000,
  mib1: 120,
  mib16: 8,
  churn: 10_000,
  refs: 10_000,
  cold: 5,
  stream: 1_000_000,
  stream_times: 3,
  array8: 8,
  list8: 2,
  predict: 200,
  predict_lists: 50
}

# Every Python process gets a bytecode cache (bench/out/pycache), as a `pip install`ed
# worker has; this environment may set PYTHONDONTWRITEBYTECODE (and the worker here is an
# editable install), which would make every worker start compile its sources.
pycache = Path.expand("../out/pycache", __DIR__)
env = [{"PYTHONDONTWRITEBYTECODE", nil}, {"PYTHONPYCACHEPREFIX", pycache}]

port_env = [
  {~c"PYTHONDONTWRITEBYTECODE", false},
  {~c"PYTHONPYCACHEPREFIX", String.to_charlist(pycache)}
]

# The floor frames are as long as Snakeport's request for operator.add.
frame = :erlang.term_to_binary({:call, 1234, "auto-1234", "operator", "add", [1, 2], %{}, %{}})
mib1 = :rand.bytes(1_048_576)
mib16 = :rand.bytes(16 * 1_048_576)
{array8, list8} = Bench.Science.data()

load = fn -> File.read!("/proc/loadavg") |> String.split() |> Enum.take(3) |> Enum.join(" ") end
load_before = load.()
suite_t0 = Stats.now()

one_round = fn round ->
  IO.puts("round #{round}/#{rounds}")

  # 5. Cold starts, interleaved; medians of n.cold samples (a pause between them lets the
  # previous interpreter exit).
  cold =
    for _ <- 1..n.cold do
      floor = Floor.cold_start(python, port_env)
      Process.sleep(30)
      {ready, ping} = Snake.cold_start(python, port_env)
      Process.sleep(30)
      pass = Snake.python_pass(python, port_env)
      Process.sleep(30)
      %{cold_floor: floor, cold_ready: ready, cold_ping: ping, cold_pass: pass}
    end

  cold = Map.new(hd(cold), fn {k, _} -> {k, Stats.median(Enum.map(cold, & &1[k]))} end)

  port = Floor.open(python, port_env)
  api_start = Snake.start(python, env, pool_size: 1)
  rss_idle = Snake.rss()

  # 4. and 5. 10k refs held by a process that gets killed (first: RSS of a fresh worker).
  {rss_refs, release_ms} = Snake.release_latency(n.refs)

  # A warm-up block (untimed), then the measured one.
  twice = fn fun, warmup_arg, arg ->
    fun.(warmup_arg)
    fun.(arg)
  end

  # 1. Sequential.
  seq_floor = twice.(&Floor.sequential(port, &1, frame), 1_000, n.seq)
  seq = twice.(&Snake.sequential/1, 1_000, n.seq)

  # 2. 64 callers, one worker.
  c64_floor = twice.(&Floor.callers(port, n.callers, &1, frame), 50, n.floor_per_caller)

  c64_window =
    twice.(&Floor.window(port, &1, n.callers, frame), 3_200, n.callers * n.floor_per_caller)

  c64 = twice.(&Snake.concurrent(n.callers, &1), 20, n.per_caller)

  # 3. Binary echo.
  echo1_floor = twice.(&Floor.echo(port, mib1, &1), 5, n.mib1)
  echo1 = twice.(&Snake.echo(mib1, &1), 5, n.mib1)
  echo16_floor = twice.(&Floor.echo(port, mib16, &1), 1, n.mib16)
  echo16 = twice.(&Snake.echo(mib16, &1), 1, n.mib16)

  # 7. numpy arrays: 8 MiB float64 there and back, as an array and as lists; predict.
  array8_rt = twice.(&Bench.Science.array_echo(array8, &1), 1, n.array8)
  list8_rt = twice.(&Bench.Science.list_echo(list8, &1), 1, n.list8)
  {model, predict_x, predict_rows} = Bench.Science.predict_setup()
  predict_arrays = twice.(&Bench.Science.predict_arrays(model, predict_x, &1), 10, n.predict)

  predict_lists = twice.(&Bench.Science.predict_lists(model, predict_rows, &1), 5, n.predict_lists)

  # 8. range(10**6): streamed vs one list result (both consumers see every item).
  stream = twice.(&Snake.stream_items(n.stream, &1), 1, n.stream_times)
  stream_list = twice.(&Snake.list_items(n.stream, &1), 1, n.stream_times)

  # 4. Ref churn.
  churn = Stats.rate([Snake.churn(n.churn)])
  versions = Snake.versions()
  Snake.stop()

  # 1. Sequential again, with a worker that never polls before it blocks (`spin_us: 0`).
  Snake.start(python, env, pool_size: 1, spin_us: 0)
  seq_nospin = twice.(&Snake.sequential/1, 1_000, n.seq)
  Snake.stop()

  # 2. 64 callers on the default pool.
  Snake.start(python, env, [])

  pool_floor = twice.(&Floor.callers(port, n.callers, &1, frame), 50, n.floor_per_caller)
  pool = twice.(&Snake.concurrent(n.callers, &1), 20, n.per_caller)
  Snake.stop()
  Floor.close(port)

  lat_floor = Stats.latency([seq_floor])
  lat = Stats.latency([seq])

  figures =
    Map.merge(cold, %{
      api_start: api_start,
      rss_idle: rss_idle / 1.0e6,
      rss_refs: rss_refs / 1.0e6,
      seq_rate: Stats.rate([seq]),
      seq_rate_floor: Stats.rate([seq_floor]),
      seq_p50: lat.p50_us,
      seq_p50_floor: lat_floor.p50_us,
      seq_p99: lat.p99_us,
      seq_p99_floor: lat_floor.p99_us,
      seq_nospin_rate: Stats.rate([seq_nospin]),
      c64: Stats.rate([c64]),
      c64_floor: Stats.rate([c64_floor]),
      c64_window: Stats.rate([c64_window]),
      pool: Stats.rate([pool]),
      pool_floor: Stats.rate([pool_floor]),
      echo1: Stats.rate([echo1]),
      echo1_floor: Stats.rate([echo1_floor]),
      echo16: Stats.rate([echo16]),
      echo16_floor: Stats.rate([echo16_floor]),
      array8: Stats.rate([array8_rt]),
      list8: Stats.rate([list8_rt]),
      predict_arrays: Stats.rate([predict_arrays]),
      predict_lists: Stats.rate([predict_lists]),
      churn: churn,
      release_ms: release_ms,
      stream: Stats.rate([stream]),
      stream_list: Stats.rate([stream_list])
    })

  IO.inspect(figures, label: "round #{round}", limit: :infinity)
  {figures, versions}
end

# One untimed cold start first: the first interpreter start pays for cold file caches.
Floor.cold_start(python, port_env)
Snake.cold_start(python, port_env)

results = for r <- 1..rounds, do: one_round.(r)
figures = Enum.map(results, &elem(&1, 0))
versions = results |> hd() |> elem(1)

codec =
  with path when is_binary(path) <- args[:codec],
       {:ok, text} <- File.read(path) do
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

cpu =
  File.read!("/proc/cpuinfo")
  |> String.split("\n")
  |> Enum.find_value(
    "unknown",
    &(String.starts_with?(&1, "model name") &&
        &1 |> String.split(":", parts: 2) |> List.last() |> String.trim())
  )

{uname, 0} = System.cmd("uname", ["-a"])

meta = %{
  date: DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_string(),
  command: System.get_env("BENCH_COMMAND", "mix run bench.exs"),
  rounds: rounds,
  suite_s: round(Stats.to_s(Stats.now() - suite_t0)),
  uname: String.trim(uname),
  cpu: cpu,
  nproc: System.schedulers_online(),
  load_before: load_before,
  load_after: load.(),
  python: versions.python,
  snakeport: versions.snakeport,
  otp: System.otp_release(),
  erts: :erlang.system_info(:version),
  elixir: System.version(),
  pool_size: System.schedulers_online(),
  counts: inspect(n)
}

Bench.Report.write(out, figures, meta, codec)
IO.puts(out |> File.read!() |> String.split("## Every round") |> hd())
IO.puts("wrote #{out}")
