# Profiling aids for the misses of bench.exs (not run by `make bench`; see ../README.md):
#
#   mix run profile.exs decompose [ROUNDS]  wall and CPU µs per request of each layer: floor,
#                                           raw worker, harness + fake worker, full Snakeport
#   mix run profile.exs harness             CPU µs of each step of Snakeport.call/4, no I/O
#   mix run profile.exs c64 [ROUNDS] [fake] BEAM CPU µs per call of 64 callers on one worker,
#                                           Snakeport against the routed floor, alternating
#   mix run profile.exs malloc              1 MiB echo, raw worker with glibc malloc defaults / tuned
#   mix run profile.exs layers [ROUNDS]     64 callers, BEAM CPU µs per call: the floor, the API,
#                                           Snakeport.Worker.request/4 called directly, and a copy of
#                                           its exchange with a receive without `after` (no timer)
#   mix run profile.exs switches [ROUNDS]   64 callers: context switches per call of the BEAM and of
#                                           the Python process (voluntary, involuntary), floor and
#                                           Snakeport (batch waits on one CPU), and Snakeport
#                                           without batch waits (SNAKEPORT_NO_BATCH_WAITS=1); rates
#   mix run profile.exs ab_echo [ROUNDS]    1 MiB echo via the API, polling default vs spin_us: 0,
#                                           fresh instances, alternating order
#   mix run profile.exs eprof [c64] [fake]  :eprof of the caller(s) and the worker process
#   mix run profile.exs pyspy MODE          py-spy record of the worker under load (MODE: seq,
#                                           c64, echo1 on a raw worker; api_seq through the API);
#                                           PYSPY_FLAGS adds flags (e.g. --gil); collapsed stacks
#                                           in ../out/pyspy-MODE.txt (../profile/pyspy_summary.py
#                                           summarises them); PERF=1: `perf record -g` instead
#                                           (../out/perf-MODE.data)
#
# "raw worker": `python -m snakeport` behind a Port driven with pre-encoded requests, no
# harness. "harness + fake": Snakeport's public API in front of ../profile/fake_worker, which
# answers without decoding, so that only the harness's own costs remain. Run the VM with
# other flags through ELIXIR_ERL_OPTIONS (e.g. "+S 1", "+sbwt very_long").

alias Bench.{Floor, Snake, Stats}

python = System.get_env("SNAKEPORT_PYTHON") || Path.expand("../../.venv/bin/python", __DIR__)
fake = Path.expand("../profile/fake_worker", __DIR__)
out_dir = Path.expand("../out", __DIR__)
File.mkdir_p!(out_dir)
pycache = Path.join(out_dir, "pycache")
env = [{"PYTHONDONTWRITEBYTECODE", nil}, {"PYTHONPYCACHEPREFIX", pycache}]
port_env = for {k, v} <- env, do: {String.to_charlist(k), v && String.to_charlist(v)}
port_env = Enum.map(port_env, fn {k, nil} -> {k, false}; kv -> kv end)

defmodule Raw do
  @moduledoc "The worker behind a Port, without the harness."

  def open(python, env) do
    helpers = String.to_charlist(Path.expand("../python", __DIR__))

    port =
      Bench.PacketPort.open(python, ["-m", "snakeport"], [{~c"PYTHONPATH", helpers} | env])

    receive do: ({^port, {:data, _ready}} -> :ok)
    frame = :erlang.term_to_binary({:open_session, 0, "s", %{}})
    {:reply, 0, :ok, _} = :erlang.binary_to_term(Floor.roundtrip(port, frame))
    port
  end

  def call(m, f, args), do: :erlang.term_to_binary({:call, 1, "s", m, f, args, %{}, %{}})
  def os_pid(port), do: port |> Port.info(:os_pid) |> elem(1)

  def echo(port, bin, n) do
    frame = call("bench_helpers", "identity", [{:"$snakeport_bytes", bin}])
    Stats.repeat(n, byte_size(bin) / 1_048_576, fn -> Floor.roundtrip(port, frame) end)
  end
end

defmodule Layers do
  @moduledoc "`layers`: Snakeport.Worker.request/4's exchange, copied, without the timer."

  # (Harness internals, read-only but for the pending row, which the worker process takes.)
  def no_timer(%{port: port, pending: pending, counter: counter}, request, session) do
    id = :atomics.add_get(counter, 1, 1)
    payload = Snakeport.Protocol.encode(request, id, session)
    tag = make_ref()
    :ets.insert(pending, {id, tag, self()})
    true = Port.command(port, payload, [:nosuspend])

    receive do
      {^tag, frame} when is_binary(frame) -> {:ok, frame}
    end
  end
end

add = Raw.call("operator", "add", [1, 2])
floor_frame = :erlang.term_to_binary({:call, 1234, "auto-1234", "operator", "add", [1, 2], %{}, %{}})
mib1 = :rand.bytes(1_048_576)

# CPU time (ns) of all threads of an OS process (Bench.Cpu).
cpu_ns = &Bench.Cpu.ns/1

beam = System.pid()

# Wraps a batch function: {wall µs, BEAM CPU µs, Python CPU µs} per request (or per MiB).
measured = fn py_pid, batch ->
  fn ->
    b0 = cpu_ns.(beam)
    p0 = cpu_ns.(py_pid)
    {amount, elapsed, _} = batch.()
    b = (cpu_ns.(beam) - b0) / 1000
    p = (cpu_ns.(py_pid) - p0) / 1000
    {Stats.to_us(elapsed) / amount, b / amount, p / amount}
  end
end

# The default instance's ready workers (harness internals, read-only).
pool_entries = fn ->
  {:ok, inst} = Snakeport.Instance.fetch(Snakeport)
  Snakeport.Pool.entries(inst.pool_table)
end

worker_os_pid = fn -> hd(pool_entries.()).os_pid end

case System.argv() do
  ["decompose" | rest] ->
    rounds = String.to_integer(List.first(rest) || "3")
    floor = Floor.open(python, port_env)
    raw = Raw.open(python, port_env)
    fp = Raw.os_pid(floor)
    rp = Raw.os_pid(raw)

    # Each phase: one Snakeport instance (fake worker, or the real one) measured in turn
    # with the floor and the raw worker, in blocks long enough to be steady.
    phase = fn label, extra ->
      Snake.start(python, env, [pool_size: 1] ++ extra)
      wp = worker_os_pid.()
      Floor.sequential(floor, 500, floor_frame)
      Floor.sequential(raw, 500, add)
      Snake.sequential(500)

      seq =
        Stats.alternate(3,
          "seq floor": measured.(fp, fn -> Floor.sequential(floor, 4_000, floor_frame) end),
          "seq floor routed": measured.(fp, fn -> Floor.callers(floor, 1, 4_000, floor_frame) end),
          "seq raw worker": measured.(rp, fn -> Floor.sequential(raw, 4_000, add) end),
          "seq #{label}": measured.(wp, fn -> Snake.sequential(4_000) end)
        )

      c64 =
        Stats.alternate(3,
          "64 floor callers": measured.(fp, fn -> Floor.callers(floor, 64, 300, floor_frame) end),
          "64 floor window": measured.(fp, fn -> Floor.window(floor, 19_200, 64, floor_frame) end),
          "64 raw worker window": measured.(rp, fn -> Floor.window(raw, 6_400, 64, add) end),
          "64 #{label} callers": measured.(wp, fn -> Snake.concurrent(64, 100) end)
        )

      echo =
        Stats.alternate(3,
          "1MiB floor": measured.(fp, fn -> Floor.echo(floor, mib1, 15) end),
          "1MiB raw worker": measured.(rp, fn -> Raw.echo(raw, mib1, 15) end),
          "1MiB #{label}": measured.(wp, fn -> Snake.echo(mib1, 15) end)
        )

      Snake.stop()
      seq |> Map.merge(c64) |> Map.merge(echo)
    end

    all =
      for r <- 1..rounds, label <- ["harness+fake", "full"], reduce: %{} do
        acc ->
          IO.puts("round #{r}: #{label}")
          extra = if label == "full", do: [], else: [python_path: [fake]]
          Map.merge(acc, phase.(label, extra), fn _, a, b -> a ++ b end)
      end

    IO.puts("\nmedians over all batches; µs per request (1MiB: per MiB round trip)")
    IO.puts(String.pad_trailing("", 26) <> "    wall  BEAM CPU  Python CPU")

    for name <- all |> Map.keys() |> Enum.sort() do
      cols =
        for i <- 0..2 do
          all[name] |> Enum.map(&elem(&1, i)) |> Stats.median() |> Float.round(1)
        end

      IO.puts(
        String.pad_trailing("#{name}", 26) <>
          Enum.map_join(Enum.zip(cols, [8, 10, 12]), fn {v, w} -> String.pad_leading("#{v}", w) end)
      )
    end

  ["c64" | rest] ->
    # The 64-caller figure alone (bench.exs's "64 callers, one worker"), in alternating
    # blocks: the floor's routed callers and Snakeport.call/3 from 64 processes with their
    # auto-sessions; BEAM CPU µs per call of each block (schedstat: the schedulers' busy
    # waits included), medians and their ratio. `fake`: the fake worker, so that only the
    # harness's own costs remain on the Python side.
    rounds = rest |> Enum.find("7", &(&1 =~ ~r/^\d+$/)) |> String.to_integer()
    extra = if "fake" in rest, do: [python_path: [fake]], else: []
    floor = Floor.open(python, port_env)
    fp = Raw.os_pid(floor)
    Snake.start(python, env, [pool_size: 1] ++ extra)
    wp = worker_os_pid.()
    Floor.callers(floor, 64, 100, floor_frame)
    Snake.concurrent(64, 100)

    rows =
      Stats.alternate(rounds,
        floor: measured.(fp, fn -> Floor.callers(floor, 64, 400, floor_frame) end),
        snakeport: measured.(wp, fn -> Snake.concurrent(64, 400) end)
      )

    Snake.stop()
    Floor.close(floor)
    [f, s] = for k <- [:floor, :snakeport], do: rows[k] |> Enum.map(&elem(&1, 1)) |> Enum.reverse()
    {mf, ms} = {Stats.median(f), Stats.median(s)}
    fmt = fn xs -> Enum.map_join(xs, " ", &:erlang.float_to_binary(&1, decimals: 2)) end
    IO.puts("BEAM CPU µs per call, 64 callers, blocks in order")
    IO.puts("  floor     #{fmt.(f)}")
    IO.puts("  snakeport #{fmt.(s)}")
    IO.puts("medians: floor #{Float.round(mf, 2)}, snakeport #{Float.round(ms, 2)}, ratio #{Float.round(ms / mf, 2)}x")

  ["layers" | rest] ->
    # The 64-caller figure peeled: the floor's routed callers; Snakeport.call/3; the same
    # frames through Snakeport.Worker.request/4 called directly (no options, session
    # checkout or argument walk; each caller in the auto-session its warm-up call made); and
    # a copy of request/4's exchange whose receive has no `after` (no timer per wait; not
    # what the harness may do: a wait without a deadline). Alternating blocks, real worker.
    rounds = rest |> Enum.find("9", &(&1 =~ ~r/^\d+$/)) |> String.to_integer()
    floor = Floor.open(python, port_env)
    fp = Raw.os_pid(floor)
    Snake.start(python, env, pool_size: 1)
    wp = worker_os_pid.()
    [entry] = pool_entries.()
    request = Snakeport.Protocol.call("operator", "add", [1, 2], %{}, %{})

    no_timer = &Layers.no_timer(entry, request, &1)

    direct = fn exchange ->
      fn callers, per ->
        Stats.concurrent(
          callers,
          per,
          fn _ ->
            {:ok, frame} = exchange.(Process.get(:layers_session))
            {:ok, 3} = Snakeport.Protocol.decode_reply(frame, Snakeport, entry.index)
          end,
          warmup: fn _ ->
            {:ok, 3} = Snakeport.call("operator", "add", [1, 2])
            # (harness internals, read-only: the session the call checked out)
            {_, sid, _, _, _} = Process.get(:"$snakeport_owned_session")
            Process.put(:layers_session, sid)
          end
        )
      end
    end

    variants = [
      floor: {fp, fn c, p -> Floor.callers(floor, c, p, floor_frame) end},
      api: {wp, fn c, p -> Snake.concurrent(c, p) end},
      "Worker.request": {wp, direct.(&Snakeport.Worker.request(entry, request, &1, 10_000))},
      "no timer": {wp, direct.(no_timer)}
    ]

    for {_, {_, f}} <- variants, do: f.(64, 100)

    rows =
      Stats.alternate(
        rounds,
        for({k, {pid, f}} <- variants, do: {k, measured.(pid, fn -> f.(64, 300) end)})
      )

    Snake.stop()
    Floor.close(floor)
    base = rows[:floor] |> Enum.map(&elem(&1, 1)) |> Stats.median()
    IO.puts("BEAM CPU µs per call, 64 callers, #{rounds} blocks each (in order) and medians")

    for {k, _} <- variants do
      bs = rows[k] |> Enum.map(&elem(&1, 1)) |> Enum.reverse()
      m = Stats.median(bs)

      IO.puts(
        String.pad_trailing("#{k}", 16) <>
          "#{Float.round(m, 2)} (#{Float.round(m / base, 2)}x)  " <>
          Enum.map_join(bs, " ", &:erlang.float_to_binary(&1, decimals: 2))
      )
    end

  ["switches" | rest] ->
    # Who wakes whom at 64 callers: per call, the context switches of the BEAM's threads and
    # of the Python process (from /proc/PID/task/*/status), with the rate and the CPU of
    # each. Involuntary switches of the BEAM are its schedulers preempted (on one CPU, by the
    # Python process a request woke). "snakeport" is the default, whose reader waits for
    # input under SCHED_BATCH (which the kernel never lets preempt on wake-up) while frames
    # come several per read on one CPU (snakeport._batch); "no batch waits" is a second
    # instance without that (SNAKEPORT_NO_BATCH_WAITS=1). Alternating blocks of 64 x 300
    # calls.
    rounds = rest |> Enum.find("5", &(&1 =~ ~r/^\d+$/)) |> String.to_integer()

    switches = fn os_pid ->
      Path.wildcard("/proc/#{os_pid}/task/*/status")
      |> Enum.reduce({0, 0}, fn file, {v, n} ->
        case File.read(file) do
          {:ok, text} ->
            pattern = ~r/^(?:non)?voluntary_ctxt_switches:\s*(\d+)/m
            [[a], [b]] = Regex.scan(pattern, text, capture: :all_but_first)

            {v + String.to_integer(a), n + String.to_integer(b)}

          _ ->
            {v, n}
        end
      end)
    end

    floor = Floor.open(python, port_env)
    fp = Raw.os_pid(floor)
    Snake.start(python, env, pool_size: 1)
    Snake.start(python, [{"SNAKEPORT_NO_BATCH_WAITS", "1"} | env], pool_size: 1, name: NoBatch)
    wp = hd(Snake.worker_pids())
    bp = hd(Snake.worker_pids(instance: NoBatch))

    block = fn py_pid, batch ->
      fn ->
        {bv, bn} = switches.(beam)
        {pv, pn} = switches.(py_pid)
        {b0, p0} = {cpu_ns.(beam), cpu_ns.(py_pid)}
        {n, elapsed, _} = batch.()
        {b1, p1} = {cpu_ns.(beam), cpu_ns.(py_pid)}
        {bv1, bn1} = switches.(beam)
        {pv1, pn1} = switches.(py_pid)

        [n / Stats.to_s(elapsed), (b1 - b0) / 1000 / n, (p1 - p0) / 1000 / n] ++
          Enum.map([bv1 - bv, bn1 - bn, pv1 - pv, pn1 - pn], &(&1 / n))
      end
    end

    Floor.callers(floor, 64, 100, floor_frame)
    Snake.concurrent(64, 100)
    Snake.concurrent(64, 100, instance: NoBatch)

    rows =
      Stats.alternate(rounds,
        floor: block.(fp, fn -> Floor.callers(floor, 64, 300, floor_frame) end),
        snakeport: block.(wp, fn -> Snake.concurrent(64, 300) end),
        "no batch waits": block.(bp, fn -> Snake.concurrent(64, 300, instance: NoBatch) end)
      )

    Snake.stop(NoBatch)
    Snake.stop()
    Floor.close(floor)

    IO.puts("medians of #{rounds} blocks, per call")

    IO.puts(
      String.pad_trailing("", 16) <>
        Enum.map_join(
          ["calls/s", "BEAM µs", "py µs", "BEAM vol", "BEAM invol", "py vol", "py invol"],
          &String.pad_leading(&1, 11)
        )
    )

    for name <- [:floor, :snakeport, :"no batch waits"] do
      cols =
        for i <- 0..6 do
          v = rows[name] |> Enum.map(&Enum.at(&1, i)) |> Stats.median()
          if i == 0, do: "#{round(v)}", else: :erlang.float_to_binary(v * 1.0, decimals: 3)
        end

      IO.puts(String.pad_trailing("#{name}", 16) <> Enum.map_join(cols, &String.pad_leading(&1, 11)))
    end

  ["malloc" | _] ->
    # 1 MiB echo on two raw workers: glibc's defaults, and glibc told to keep freed memory
    # (no trimming, no mmap per large block), which removes the page faults of fresh buffers.
    keep = [
      {~c"MALLOC_TRIM_THRESHOLD_", ~c"268435456"},
      {~c"MALLOC_MMAP_THRESHOLD_", ~c"268435456"},
      {~c"MALLOC_TOP_PAD_", ~c"67108864"}
    ]

    floor = Floor.open(python, port_env)
    plain = Raw.open(python, port_env)
    kept = Raw.open(python, keep ++ port_env)

    rows =
      Stats.alternate(5,
        "1MiB floor": measured.(Raw.os_pid(floor), fn -> Floor.echo(floor, mib1, 10) end),
        "1MiB raw worker, glibc defaults": measured.(Raw.os_pid(plain), fn -> Raw.echo(plain, mib1, 10) end),
        "1MiB raw worker, MALLOC_* kept": measured.(Raw.os_pid(kept), fn -> Raw.echo(kept, mib1, 10) end)
      )

    IO.puts("µs per 1 MiB round trip (medians): wall, BEAM CPU, Python CPU")

    for {name, batches} <- Enum.sort(rows) do
      cols = for i <- 0..2, do: batches |> Enum.map(&elem(&1, i)) |> Stats.median() |> round()
      IO.puts("#{name}: #{inspect(cols)}")
    end

  ["ab_echo" | rest] ->
    # 1 MiB echo through the public API, the worker's polling default against spin_us: 0,
    # each on a fresh instance, alternating which goes first (make bench measures the
    # alternative later in the round, after other figures): MiB/s and CPU µs per MiB.
    rounds = String.to_integer(List.first(rest) || "3")

    for round <- 1..rounds,
        spin <- if(rem(round, 2) == 1, do: [:default, 0], else: [0, :default]) do
      extra = if spin == :default, do: [], else: [spin_us: spin]
      Snake.start(python, env, [pool_size: 1] ++ extra)
      Snake.echo(mib1, 5)
      {wall, b, p} = measured.(worker_os_pid.(), fn -> Snake.echo(mib1, 100) end).()

      IO.puts(
        "round #{round}, spin_us #{spin}: #{Float.round(1.0e6 / wall, 1)} MiB/s, " <>
          "CPU µs per MiB worker #{round(p)} / BEAM #{round(b)}"
      )

      Snake.stop()
    end

  ["harness" | _] ->
    # The CPU cost of each step of Snakeport.call/4 in the caller (and the routing in the
    # worker process), timed in a loop without any I/O. Uses harness internals, read-only.
    alias Snakeport.{Instance, Protocol, Sessions, Telemetry}
    Snake.start(python, env, pool_size: 1, python_path: [fake])
    [entry] = pool_entries.()
    {:ok, inst} = Instance.fetch(Snakeport)
    {:ok, session} = Sessions.checkout(inst, nil, nil, 5_000)
    request = Protocol.call("operator", "add", [1, 2], %{}, %{})
    reply = :erlang.term_to_binary({:reply, 123, :ok, 3}, minor_version: 2)
    reply1 = :erlang.term_to_binary({:reply, 123, :ok, mib1}, minor_version: 2)
    meta = %{op: :call, module: "operator", function: "add"}
    n = 200_000

    # Results are dropped (Enum.each), so that no GC of kept results is timed.
    time = fn label, n, fun ->
      fun.()
      {us, _} = :timer.tc(fn -> Enum.each(1..n, fn _ -> fun.() end) end)
      {label, us / n}
    end

    rows = [
      time.("loop overhead", n, fn -> :ok end),
      time.("Snakeport.call: names, Instance.fetch, Protocol.to_wire, Protocol.call", n, fn ->
        Protocol.name("operator")
        Protocol.name("add")
        {:ok, _} = Instance.fetch(Snakeport)
        {:ok, {args, kwargs}, nil, []} = Protocol.to_wire({[1, 2], %{}}, Snakeport)
        Protocol.call("operator", "add", args, kwargs, %{})
      end),
      time.("Sessions.checkout (SessionContext.current; the cached session, or 2 ETS lookups)", n, fn ->
        Sessions.checkout(inst, nil, nil, 5_000)
      end),
      time.("Client.run: meta merge, clocks, 2 Telemetry.execute", n, fn ->
        meta2 = Map.merge(meta, %{instance: Snakeport, session_id: session.id, worker: 0})
        start = System.monotonic_time()
        m = %{system_time: System.system_time(), monotonic_time: start}
        Telemetry.execute([:snakeport, :call, :start], m, meta2)
        stop = System.monotonic_time()
        m = %{duration: stop - start, monotonic_time: stop}
        Telemetry.execute([:snakeport, :call, :stop], m, meta2)
      end),
      time.("Client.run telemetry when nobody listens: Telemetry.listening?", n, fn ->
        Telemetry.listening?([:snakeport, :call])
      end),
      time.("Protocol.encode (id and session, external_size, term_to_binary)", n, fn ->
        Protocol.encode(request, 123, session.id)
      end),
      time.("Worker: id, reply tag (make_ref), pending row insert / take", n, fn ->
        id = :atomics.add_get(entry.counter, 1, 1)
        tag = make_ref()
        :ets.insert(entry.pending, {id, tag, self()})
        :ets.take(entry.pending, id)
      end),
      time.("Worker.route: Protocol.frame_kind", n, fn -> Protocol.frame_kind(reply) end),
      time.("Protocol.decode_reply (a small reply: the fast path)", n, fn ->
        Protocol.decode_reply(reply, Snakeport, 0)
      end),
      time.("1 MiB reply: Protocol.decode_reply", 300, fn -> Protocol.decode_reply(reply1, Snakeport, 0) end),
      time.("1 MiB reply: binary_to_term(:safe) alone", 300, fn ->
        :erlang.binary_to_term(reply1, [:safe])
      end),
      time.("1 MiB reply: :binary.match(frame, \"$snakeport_\") alone", 300, fn ->
        :binary.match(reply1, "$snakeport_")
      end)
    ]

    Snake.stop()

    for {label, us} <- rows,
        do: IO.puts(String.pad_leading(:erlang.float_to_binary(us, decimals: 2), 8) <> " µs  " <> label)

  ["eprof" | rest] ->
    # eprof [seq|c64] [fake]: the callers (and the processes they spawn) and the worker process.
    extra = if "fake" in rest, do: [python_path: [fake]], else: []
    Snake.start(python, env, [pool_size: 1] ++ extra)
    Snake.sequential(2_000)
    [%{pid: worker}] = pool_entries.()
    :eprof.start()
    :eprof.start_profiling([self(), worker])
    if "c64" in rest, do: Snake.concurrent(64, 300), else: Snake.sequential(20_000)
    :eprof.stop_profiling()
    :eprof.log(Path.join(out_dir, "eprof.txt"))
    :eprof.analyze(:total, sort: :time)
    Snake.stop()

  ["pyspy", mode] ->
    duration = 8
    file = Path.join(out_dir, "pyspy-#{mode}.txt")
    pyspy = Path.join(Path.dirname(python), "py-spy")

    {os_pid, load, cleanup} =
      case mode do
        "api_" <> _ ->
          Snake.start(python, env, pool_size: 1)
          {worker_os_pid.(), fn -> Snake.sequential(500) end, &Snake.stop/0}

        _ ->
          raw = Raw.open(python, port_env)

          load =
            case mode do
              "seq" -> fn -> Floor.sequential(raw, 2_000, add) end
              "c64" -> fn -> Floor.window(raw, 6_400, 64, add) end
              "echo1" -> fn -> Raw.echo(raw, mib1, 20) end
            end

          {Raw.os_pid(raw), load, fn -> Floor.close(raw) end}
      end

    profiler =
      Task.async(fn ->
        if System.get_env("PERF") do
          perf_file = Path.join(out_dir, "perf-#{mode}.data")
          args = ~w(record -F 1999 -g -p #{os_pid} -o #{perf_file} -- sleep #{duration})
          System.cmd("perf", args, stderr_to_stdout: true)
        else
          flags = String.split(System.get_env("PYSPY_FLAGS", ""))
          args = ~w(record --format raw -r 2000 -d #{duration} -p #{os_pid} -o #{file}) ++ flags
          System.cmd(pyspy, args, stderr_to_stdout: true)
        end
      end)

    Process.sleep(1_000)
    deadline = Stats.now() + System.convert_time_unit(duration, :second, :native)
    count = Stream.repeatedly(load) |> Enum.take_while(fn _ -> Stats.now() < deadline end)
    {out, _} = Task.await(profiler, 30_000)
    cleanup.()
    IO.puts(out)
    IO.puts("#{length(count)} load batches")
end
