# The cluster benchmark (run by `make bench` after bench.exs, target `cluster` of
# bench/Makefile): `mix run cluster.exs [--out RESULTS-cluster.md]`. Two nodes on this
# machine: this VM (node A, an instance with `pool_size: 0`: every session it opens is
# placed on B) and a peer VM (node B, started with :peer, one worker). Each round measures,
# back to back, calls from A to B's worker and the same calls made on B to its own worker
# (the local path), sequential and with 64 callers, each block after an untimed warm-up
# block of its own; the CPU time of both VMs and of the worker is read from /proc around
# every measured block. The table shows the medians and the median of the per-round ratios
# A→B ÷ local on B. Environment: SNAKEPORT_PYTHON, BENCH_ROUNDS (default 7, at least 3).

alias Bench.{Cluster, Snake, Stats}

{args, _, _} = OptionParser.parse(System.argv(), strict: [out: :string])
out = args[:out] || Path.expand("../RESULTS-cluster.md", __DIR__)
python = System.get_env("SNAKEPORT_PYTHON") || Path.expand("../../.venv/bin/python", __DIR__)
rounds = max(3, String.to_integer(System.get_env("BENCH_ROUNDS", "7")))
n = %{seq: 5_000, callers: 64, per_caller: 300}

pycache = Path.expand("../out/pycache", __DIR__)
env = [{"PYTHONDONTWRITEBYTECODE", nil}, {"PYTHONPYCACHEPREFIX", pycache}]
helpers = Path.expand("../python", __DIR__)

# This VM must be distributed (short names; epmd started first, as `erl -sname` would).
unless Node.alive?() do
  epmd = System.find_executable("epmd") || Path.join(:code.root_dir(), "bin/epmd")
  {_, 0} = System.cmd(epmd, ["-daemon"])
  {:ok, _} = :net_kernel.start([:"bench_a_#{System.pid()}", :shortnames])
end

# Node B: the same code path and cookie; controlled over its stdio (it halts when this VM
# goes), joined to A by an ordinary distribution connection.
otp = to_string(:code.lib_dir())

paths =
  :code.get_path()
  |> Enum.reject(&String.starts_with?(to_string(&1), otp))
  |> Enum.flat_map(&[~c"-pa", &1])

{:ok, peer, b} =
  :peer.start(%{
    name: :"bench_b_#{System.pid()}",
    connection: :standard_io,
    args: [~c"-setcookie", Atom.to_charlist(Node.get_cookie()) | paths],
    wait_boot: 30_000
  })

true = Node.connect(b)
{:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:snakeport_bench], 60_000)
:peer.call(peer, Logger, :configure, [[level: :warning]])

opts = [python: python, python_path: [helpers], env: env]

{:ok, _} =
  :peer.call(
    peer,
    Supervisor,
    :start_child,
    [Snakeport.Application.Supervisor, {Snakeport, [pool_size: 1] ++ opts}],
    60_000
  )

{:ok, sup} = Snakeport.start_link([pool_size: 0] ++ opts)
Process.unlink(sup)

# A's sessions go to B once A has seen B's worker (a bounded poll: 10 s at most).
placed_on_b = fn ->
  match?({:ok, %Snakeport.Ref{node: ^b}}, Snakeport.call("builtins", "object", [], result: :ref))
end

wait_for_b = fn wait_for_b, deadline ->
  cond do
    placed_on_b.() ->
      :ok

    System.monotonic_time(:millisecond) > deadline ->
      raise "node A did not see node B's worker within 10 s"

    true ->
      Process.sleep(20)
      wait_for_b.(wait_for_b, deadline)
  end
end

:ok = wait_for_b.(wait_for_b, System.monotonic_time(:millisecond) + 10_000)

{:ok, %{workers: [%{os_pid: worker}]}} = :peer.call(peer, Snakeport, :stats, [[cluster: false]])
b_os = :peer.call(peer, System, :pid, [])
pids = %{a: System.pid(), b: b_os, py: worker}

on_b = fn fun, args -> :peer.call(peer, Snake, fun, args, :infinity) end
echo = Node.spawn(b, Cluster, :loop, [])

# A warm-up block (untimed), then the measured one with the CPU of A, B and the worker.
measured = fn fun ->
  fun.()
  Cluster.measure(pids, fun)
end

load = fn -> File.read!("/proc/loadavg") |> String.split() |> Enum.take(3) |> Enum.join(" ") end
load_before = load.()

figures =
  for round <- 1..rounds do
    IO.puts("round #{round}/#{rounds}")
    {seq_floor, _} = measured.(fn -> Cluster.echo(echo, n.seq) end)
    {seq_local, cpu_seq_local} = measured.(fn -> on_b.(:sequential, [n.seq]) end)
    {seq_remote, cpu_seq_remote} = measured.(fn -> Snake.sequential(n.seq) end)
    {c64_local, cpu_c64_local} = measured.(fn -> on_b.(:concurrent, [n.callers, n.per_caller]) end)
    {c64_remote, cpu_c64_remote} = measured.(fn -> Snake.concurrent(n.callers, n.per_caller) end)

    figures = %{
      seq_local: Stats.rate([seq_local]),
      seq_remote: Stats.rate([seq_remote]),
      p50_local: Stats.latency([seq_local]).p50_us,
      p50_remote: Stats.latency([seq_remote]).p50_us,
      p50_floor: Stats.latency([seq_floor]).p50_us,
      c64_local: Stats.rate([c64_local]),
      c64_remote: Stats.rate([c64_remote]),
      cpu: %{
        seq_local: cpu_seq_local,
        seq_remote: cpu_seq_remote,
        c64_local: cpu_c64_local,
        c64_remote: cpu_c64_remote
      }
    }

    IO.inspect(Map.delete(figures, :cpu), label: "round #{round}")
    figures
  end

:peer.stop(peer)

median = fn get -> Stats.median(Enum.map(figures, get)) end
ratio = fn a, b -> Stats.median(Enum.map(figures, &(&1[a] / &1[b]))) end
fmt = fn x -> :erlang.float_to_binary(x / 1, decimals: 1) end

rows = [
  {"Sequential `call(\"operator\", \"add\", [1, 2])`, calls/s", :seq_remote, :seq_local},
  {"Sequential latency p50, µs", :p50_remote, :p50_local},
  {"64 callers (a session each), one worker, calls/s", :c64_remote, :c64_local}
]

table =
  for {what, remote, local} <- rows do
    "| #{what} | #{fmt.(median.(& &1[remote]))} | #{fmt.(median.(& &1[local]))} | " <>
      "#{:erlang.float_to_binary(ratio.(remote, local), decimals: 2)}x |\n"
  end

floor =
  "| Distribution floor: a message A → a process on B → A, round trip p50, µs | " <>
    "#{fmt.(median.(& &1.p50_floor))} | | |\n"

cpu_rows =
  for {what, key} <- [
        {"sequential, A → B", :seq_remote},
        {"sequential, local on B", :seq_local},
        {"64 callers, A → B", :c64_remote},
        {"64 callers, local on B", :c64_local}
      ] do
    cpu = fn who -> median.(& &1.cpu[key][who]) end
    total = median.(&(&1.cpu[key].a + &1.cpu[key].b + &1.cpu[key].py))

    "| #{what} | #{fmt.(cpu.(:a))} | #{fmt.(cpu.(:b))} | #{fmt.(cpu.(:py))} | #{fmt.(total)} |\n"
  end

{uname, 0} = System.cmd("uname", ["-srm"])
extra = median.(&(&1.p50_remote - &1.p50_local))

report = """
# Snakeport cluster benchmark (`make bench`, bench/elixir/cluster.exs)

Node A (this VM, `pool_size: 0`) calls the one worker of node B (a peer VM on the same
machine, started with `:peer`); "local on B" is the same call made on B by B's own
processes. Medians of #{rounds} rounds; the ratio is the median of the per-round ratios
A→B ÷ local on B. Indicative: both VMs and the worker share this machine's CPUs.

| figure | A → worker on B | local on B | ratio |
|---|---|---|---|
#{table}#{floor}
CPU µs per call (medians; each VM's own process, all its threads, and B's worker; A is
idle, but for its poll of /proc and the :peer control call, in the "local on B" rows):

| block | VM A | VM B | worker (Python) | total |
|---|---|---|---|---|
#{cpu_rows}
A sequential call from A to B's worker took #{fmt.(extra)} µs (p50) more than the same call
on B, #{fmt.(extra / median.(& &1.p50_floor))} times the floor's round trip (Erlang
distribution over loopback TCP between two VMs here). Per call, the caller monitors B's
worker (a signal to B), sends the request to the worker's courier on B (one more process
wake-up there before the port write), gets the reply straight from the worker, and the
monitor's removal is one more signal to B; both VMs also encode and decode the request and
the reply for the hop (the CPU table).

Date #{DateTime.utc_now() |> DateTime.truncate(:second)}, #{String.trim(uname)}, \
#{System.schedulers_online()} CPUs, OTP #{System.otp_release()}, Elixir #{System.version()}, \
load before #{load_before}, after #{load.()}; counts #{inspect(n)}.
"""

File.write!(out, report)
IO.puts(report)
IO.puts("wrote #{out}")
