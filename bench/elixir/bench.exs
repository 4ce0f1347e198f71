# The Snakeport benchmark suite, one regime: `mix run bench.exs [--regime NAME] [--save FILE]
# [--codec CODEC_OUTPUT] [--out RESULTS.md]` (`make bench` runs it twice: on 2 vCPUs, then
# under `taskset -c 0`, and report.exs writes RESULTS.md from both). Every round measures the
# floor (bench/floor_echo.py behind a Port) and Snakeport back to back, each block with the
# CPU time the worker (or the floor's Python process) and the BEAM spent in it.
# Environment: SNAKEPORT_PYTHON (interpreter with the worker), BENCH_ROUNDS (default 5).

alias Bench.{Cpu, Floor, Snake, Stats}

{args, _, _} =
  OptionParser.parse(System.argv(),
    strict: [codec: :string, out: :string, regime: :string, save: :string]
  )

python = System.get_env("SNAKEPORT_PYTHON") || Path.expand("../../.venv/bin/python", __DIR__)
rounds = max(3, String.to_integer(System.get_env("BENCH_ROUNDS", "5")))
regime = args[:regime] || "as started"

# Counts per round. Each measurement is one steady block per side (floor, then Snakeport),
# after an untimed warm-up block of its own: short alternating batches would let one side
# run on CPUs that the other one has just woken up (see README.md, "Noise"). Blocks last
# about 0.1-0.5 s: shorter ones (30 ms for the 1 MiB echo) let one hiccup of the machine
# move a round's ratio by 20%.
n = %{
  seq: 8_000,
  callers: 64,
  per_caller: 600,
  floor_per_caller: 2_000,
  mib1: 100,
  mib16: 6,
  churn: 5_000,
  refs: 10_000,
  cold: 3,
  stream: 1_000_000,
  stream_times: 2,
  array8: 8,
  list8: 1,
  array_pairs: 4,
  predict: 200,
  predict_lists: 30,
  # The A/B rows (default vs alternative): pairs of blocks per round, and the blocks' counts
  # (a quarter of the single measurements'). 36 pairs: on 2 vCPUs each worker's polling
  # policy spins or not for ~1 s at a time (between its trials), so that sequential pairs of
  # two identical workers spread over ~0.75x-1.25x (middle half) and 60 pairs in all gave
  # 0.92x once in four runs (and 64 callers 0.95x once in five); 36 pairs per round sample
  # three times as many of those periods. The ref churn's blocks are longer (~0.2 s) and
  # its pairs spread less: 12.
  ab_pairs: 36,
  ab_churn_pairs: 12,
  # ... spread over this many pairs of fresh instances per round (each pair of instances
  # keeps its own state: on 2 vCPUs the rounds' own medians of two workers that behave the
  # same spread over 0.9x-1.17x within a run).
  ab_groups: 3,
  ab_seq: 2_000,
  ab_per_caller: 150,
  ab_mib1: 25,
  ab_churn: 1_250
}

# BENCH_QUICK=1: every count but the callers and the A/B pairs divided by 10 (at least 1),
# to check the suite itself runs.
n =
  if System.get_env("BENCH_QUICK") in [nil, "", "0"],
    do: n,
    else:
      Map.new(n, fn {k, v} ->
        {k,
         if(k in [:callers, :ab_pairs, :ab_churn_pairs, :ab_groups], do: v, else: max(1, div(v, 10)))}
      end)

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

# The machine reference, before the rounds (in this regime).
reference = %{
  python_loop_ms: Bench.Reference.python_ms(python),
  erlang_loop_ms: Bench.Reference.erlang_ms()
}

# A warm-up block (untimed), then the measured one with the CPU time of `pids` (Python
# processes) and of the BEAM: {batch, cpu}.
measure = fn pids, fun, warmup_arg, arg ->
  fun.(warmup_arg)
  Cpu.measure(pids, fn -> fun.(arg) end)
end

# A measured block as figures: the rate, and CPU µs per unit of the Python side and the BEAM.
figures_of = fn key, {{amount, _, _} = batch, cpu} ->
  %{
    key => Stats.rate([batch]),
    :"#{key}_py" => cpu.py / 1000 / amount,
    :"#{key}_beam" => cpu.beam / 1000 / amount
  }
end

# Measured blocks of the same kind as one: amounts, times and CPU added up.
add_blocks = fn {{a1, e1, l1}, c1}, {{a2, e2, l2}, c2} ->
  {{a1 + a2, e1 + e2, l1 ++ l2}, %{py: c1.py + c2.py, beam: c1.beam + c2.beam}}
end

# `count` pairs of two measured blocks, `blocks` = [{kind, fun}, {kind, fun}] (each fun
# returns {batch, cpu}), in that order in odd pairs and the other way in even ones:
# `[%{kind => {batch, cpu}}]`.
pairs_of = fn count, blocks ->
  for i <- 1..count do
    order = if rem(i, 2) == 1, do: blocks, else: Enum.reverse(blocks)
    Map.new(order, fn {kind, block} -> {kind, block.()} end)
  end
end

# Pairs as figures: each kind's blocks added up, and `:pairs`, the ratios `top` ÷ `bottom`
# of the two blocks' rates in each pair.
sum_pairs = fn pairs, top, bottom ->
  rate = fn {batch, _cpu} -> Stats.rate([batch]) end

  [top, bottom]
  |> Map.new(fn kind -> {kind, pairs |> Enum.map(& &1[kind]) |> Enum.reduce(add_blocks)} end)
  |> Map.put(:pairs, Enum.map(pairs, &(rate.(&1[top]) / rate.(&1[bottom]))))
end

one_round = fn round ->
  IO.puts("round #{round}/#{rounds} (#{regime})")

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
  fp = [Bench.Floor.os_pid(port)]
  api_start = Snake.start(python, env, pool_size: 1)
  wp = Snake.worker_pids()
  rss_idle = Snake.rss()

  # 4. and 5. 10k refs held by a process that gets killed (first: RSS of a fresh worker).
  {rss_refs, release_ms} = Snake.release_latency(n.refs)

  # 1. Sequential.
  seq_floor = measure.(fp, &Floor.sequential(port, &1, frame), 1_000, n.seq)
  seq = measure.(wp, &Snake.sequential/1, 1_000, n.seq)

  # 2. 64 callers, one worker.
  c64_floor = measure.(fp, &Floor.callers(port, n.callers, &1, frame), 50, n.floor_per_caller)

  c64_window =
    measure.(fp, &Floor.window(port, &1, n.callers, frame), 3_200, n.callers * n.floor_per_caller)

  c64 = measure.(wp, &Snake.concurrent(n.callers, &1), 20, n.per_caller)

  # 3. Binary echo.
  echo1_floor = measure.(fp, &Floor.echo(port, mib1, &1), 5, n.mib1)
  # The same echo with the worker's 1 MiB pipes (floor_echo.py, FLOOR_PIPE_BYTES), opened
  # for this figure only: the reference of what a large-binary echo can reach with them.
  wide = Floor.open(python, [{~c"FLOOR_PIPE_BYTES", ~c"1048576"} | port_env])
  echo1_wide = measure.([Floor.os_pid(wide)], &Floor.echo(wide, mib1, &1), 5, n.mib1)
  Floor.close(wide)
  echo1 = measure.(wp, &Snake.echo(mib1, &1), 5, n.mib1)
  echo16_floor = measure.(fp, &Floor.echo(port, mib16, &1), 1, n.mib16)
  echo16 = measure.(wp, &Snake.echo(mib16, &1), 1, n.mib16)

  # 4. Ref churn (warmed up like its alternative below). Before the figures that came with
  # later issues (7, 8), so that it runs after the same figures as in the bench before
  # them (0bc33a2's), on a worker that has not imported numpy or scikit-learn.
  churn = measure.(wp, &Snake.churn/1, div(n.churn, 10), n.churn)

  # 7. numpy arrays: 8 MiB float64 there and back, as an array and as lists; predict.
  # The array and the lists in n.array_pairs pairs of blocks, array first then lists first in
  # turn: the lists ratio is the median of the pairs' ratios over the rounds (report.ex,
  # `:paired_min`). One block of each per round made that ratio spread over 14.5x-32x
  # between rounds on 2 vCPUs (2026-12-04), the two blocks measured at different moments of
  # the machine. Each block follows an untimed one of its own kind, the array's as long as
  # the measured one: right after a lists round trip (its ~9 MB frames and 1M-element
  # lists), the next ~10 array round trips run slower (2 vCPUs, 2026-12-04, medians of 16
  # blocks: 619 against 818 MiB/s after arrays, the VM's CPU 1,285 against 938 µs per MiB,
  # one warm-up round trip in between or not), a cost of the lists' churn that the pairs
  # would otherwise charge to the array in every other pair.
  array_list =
    n.array_pairs
    |> pairs_of.(
      array: fn -> measure.(wp, &Bench.Science.array_echo(array8, &1), n.array8, n.array8) end,
      list: fn -> measure.(wp, &Bench.Science.list_echo(list8, &1), 1, n.list8) end
    )
    |> sum_pairs.(:array, :list)

  {model, predict_x, predict_rows} = Bench.Science.predict_setup()
  predict_arrays = measure.(wp, &Bench.Science.predict_arrays(model, predict_x, &1), 10, n.predict)

  predict_lists =
    measure.(wp, &Bench.Science.predict_lists(model, predict_rows, &1), 5, n.predict_lists)

  # 8. range(10**6): streamed vs one list result (both consumers see every item).
  stream = measure.(wp, &Snake.stream_items(n.stream, &1), 1, n.stream_times)
  stream_list = measure.(wp, &Snake.list_items(n.stream, &1), 1, n.stream_times)

  versions = Snake.versions()
  worker_cpus = wp |> hd() |> Cpu.affinity()
  Snake.stop()

  # The worker's defaults against their alternatives (see README.md): the polling default
  # against the other `spin_us` setting, and the batch waits against a worker without them.
  # Each row is measured on n.ab_groups pairs of fresh instances per round, the two of a pair
  # started in turn (the default first in odd groups of odd rounds, and so on); each pair
  # warms up on the row's work (the first block of a kind after other work pays for what the
  # VM or the machine sets up for it), then runs pairs of short blocks, A B then B A in turn
  # (A: the side started first), so that neither side always runs second, on CPUs the other
  # has just woken, after the other's garbage. A row's ratio is the median of all its pairs'
  # ratios over the rounds (report.ex, `:paired_min`): two blocks next to each other share
  # the machine's state of the moment, and a hiccup of the machine moves one pair of many.
  # A pair of instances keeps its own state for as long as it lives (where its memory lies;
  # on 2 vCPUs each worker's polling verdict, which holds for a second between trials), so
  # the pairs of blocks are spread over several pairs of instances. Each side's blocks are
  # added up for the rate and CPU columns. Both are called with `instance:`. (bench/README.md
  # and PROFILE.md: what these rows gave before, measured otherwise.)
  start_default = fn -> Snake.start(python, env, pool_size: 1, name: Bench.Default) end

  polling_alt =
    {Bench.Alt,
     fn ->
       Snake.start(python, env, pool_size: 1, name: Bench.Alt, spin_us: Snake.alternative_spin_us())
     end}

  no_batch_alt =
    {Bench.NoBatch,
     fn ->
       Snake.start(python, [{"SNAKEPORT_NO_BATCH_WAITS", "1"} | env],
         pool_size: 1,
         name: Bench.NoBatch
       )
     end}

  ab = fn fun, warmup_arg, arg, {alternative, start_alternative}, pair_count ->
    1..n.ab_groups
    |> Enum.flat_map(fn g ->
      sides = [def: {Bench.Default, start_default}, alt: {alternative, start_alternative}]
      sides = if rem(round + g, 2) == 0, do: sides, else: Enum.reverse(sides)
      Enum.each(sides, fn {_, {_, start}} -> start.() end)
      for {_, {name, _}} <- sides, do: fun.(warmup_arg, instance: name)

      blocks =
        for {side, {name, _}} <- sides do
          opts = [instance: name]
          {side, fn -> Cpu.measure(Snake.worker_pids(opts), fn -> fun.(arg, opts) end) end}
        end

      pairs = pairs_of.(max(1, div(pair_count, n.ab_groups)), blocks)
      Enum.each(sides, fn {_, {name, _}} -> Snake.stop(name) end)
      pairs
    end)
    |> sum_pairs.(:def, :alt)
  end

  # Sequential calls and 64 callers, the default against `alternative`.
  seq_vs = fn alternative ->
    ab.(&Snake.sequential/2, 1_000, n.ab_seq, alternative, n.ab_pairs)
  end

  c64_vs = fn alternative ->
    ab.(&Snake.concurrent(n.callers, &1, &2), 20, n.ab_per_caller, alternative, n.ab_pairs)
  end

  seq_ab = seq_vs.(polling_alt)
  c64_ab = c64_vs.(polling_alt)
  echo1_ab = ab.(&Snake.echo(mib1, &1, &2), 5, n.ab_mib1, polling_alt, n.ab_pairs)
  churn_ab = ab.(&Snake.churn/2, div(n.churn, 10), n.ab_churn, polling_alt, n.ab_churn_pairs)
  seq_batch = seq_vs.(no_batch_alt)
  c64_batch = c64_vs.(no_batch_alt)

  # 2. 64 callers on the default pool.
  Snake.start(python, env, [])
  pool_floor = measure.(fp, &Floor.callers(port, n.callers, &1, frame), 50, n.floor_per_caller)
  pool = measure.(Snake.worker_pids(), &Snake.concurrent(n.callers, &1), 20, n.per_caller)
  Snake.stop()
  Floor.close(port)

  lat_floor = Stats.latency([elem(seq_floor, 0)])
  lat = Stats.latency([elem(seq, 0)])

  figures =
    [
      figures_of.(:seq, seq),
      figures_of.(:seq_floor, seq_floor),
      figures_of.(:seq_def, seq_ab.def),
      figures_of.(:seq_alt, seq_ab.alt),
      figures_of.(:c64, c64),
      figures_of.(:c64_floor, c64_floor),
      figures_of.(:c64_window, c64_window),
      figures_of.(:c64_def, c64_ab.def),
      figures_of.(:c64_alt, c64_ab.alt),
      figures_of.(:pool, pool),
      figures_of.(:pool_floor, pool_floor),
      figures_of.(:echo1, echo1),
      figures_of.(:echo1_floor, echo1_floor),
      figures_of.(:echo1_wide, echo1_wide),
      figures_of.(:echo1_def, echo1_ab.def),
      figures_of.(:echo1_alt, echo1_ab.alt),
      figures_of.(:echo16, echo16),
      figures_of.(:echo16_floor, echo16_floor),
      figures_of.(:array8, array_list.array),
      figures_of.(:list8, array_list.list),
      figures_of.(:predict_arrays, predict_arrays),
      figures_of.(:predict_lists, predict_lists),
      figures_of.(:stream, stream),
      figures_of.(:stream_list, stream_list),
      figures_of.(:churn, churn),
      figures_of.(:churn_def, churn_ab.def),
      figures_of.(:churn_alt, churn_ab.alt),
      figures_of.(:seq_bdef, seq_batch.def),
      figures_of.(:seq_boff, seq_batch.alt),
      figures_of.(:c64_bdef, c64_batch.def),
      figures_of.(:c64_boff, c64_batch.alt)
    ]
    |> Enum.reduce(cold, &Map.merge(&2, &1))
    |> Map.merge(%{
      api_start: api_start,
      rss_idle: rss_idle / 1.0e6,
      rss_refs: rss_refs / 1.0e6,
      seq_p50: lat.p50_us,
      seq_p50_floor: lat_floor.p50_us,
      seq_p99: lat.p99_us,
      seq_p99_floor: lat_floor.p99_us,
      release_ms: release_ms,
      # The A/B rows' pair ratios (default ÷ alternative), pooled over the rounds by the report.
      seq_def_pairs: seq_ab.pairs,
      c64_def_pairs: c64_ab.pairs,
      echo1_def_pairs: echo1_ab.pairs,
      churn_def_pairs: churn_ab.pairs,
      seq_bdef_pairs: seq_batch.pairs,
      c64_bdef_pairs: c64_batch.pairs,
      array8_pairs: array_list.pairs
    })

  IO.inspect(Map.take(figures, [:seq, :seq_floor, :c64, :c64_floor, :echo1, :echo1_floor]),
    label: "round #{round}"
  )

  {figures, versions, worker_cpus}
end

# One untimed cold start first: the first interpreter start pays for cold file caches.
Floor.cold_start(python, port_env)
Snake.cold_start(python, port_env)

results = for r <- 1..rounds, do: one_round.(r)
figures = Enum.map(results, &elem(&1, 0))
{_, versions, worker_cpus} = hd(results)

meta = %{
  regime: regime,
  date: DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_string(),
  rounds: rounds,
  suite_s: round(Stats.to_s(Stats.now() - suite_t0)),
  schedulers: System.schedulers_online(),
  beam_cpus: Cpu.affinity(Cpu.beam()),
  worker_cpus: worker_cpus,
  load_before: load_before,
  load_after: load.(),
  reference: reference,
  python: versions.python,
  snakeport: versions.snakeport,
  fast_path: versions.fast_path,
  spin_default: Snake.default_spin_us(),
  spin_alternative: Snake.alternative_spin_us(),
  counts: inspect(n)
}

run = %{meta: meta, rounds: figures}

if path = args[:save] do
  File.mkdir_p!(Path.dirname(path))
  File.write!(path, :erlang.term_to_binary(run))
  IO.puts("saved #{path}")
end

if out = args[:out] do
  Bench.Report.write(out, [run], Bench.Report.codec(args[:codec]))
  IO.puts("wrote #{out}")
end
