defmodule Snakeport.ClusterCase do
  @moduledoc """
  Helpers of the cluster tests: real peer nodes (`:peer`, OTP 25) on this machine, each a
  VM of its own with the harness's code path and its own Snakeport instance (real Python
  workers of the test interpreter).

  The test VM is distributed by test_helper.exs. A peer is controlled over its standard
  I/O (`connection: :standard_io`), not over distribution, so that a test can disconnect
  it, or kill its OS process, and still ask it (or not) what it sees; it joins the cluster
  through an ordinary distribution connection (`Node.connect/1`, same cookie).

  Code that runs on a peer must be in a compiled module (this one): the test modules are
  compiled in memory, their functions do not exist there.
  """

  import ExUnit.Assertions

  @doc """
  Starts a peer node (name `prefix` plus a unique number), connects it, starts the
  application there and, unless `instance: nil`, the instance `instance` with `opts`
  (merged over the test interpreter, `test/python` on the path, `pool_size: 1`).
  Returns `%{peer: pid, node: node, os_pid: os_pid}`; the peer is stopped when the test ends.
  """
  def start_peer(prefix, instance, opts \\ []) do
    name = :"#{prefix}#{System.unique_integer([:positive])}"
    cookie = Node.get_cookie() |> Atom.to_charlist()
    otp = to_string(:code.lib_dir())

    paths =
      :code.get_path()
      |> Enum.reject(&String.starts_with?(to_string(&1), otp))
      |> Enum.flat_map(&[~c"-pa", &1])

    # Not linked: a test kills peers.
    {:ok, peer, node} =
      :peer.start(%{
        name: name,
        connection: :standard_io,
        args: [~c"-setcookie", cookie | paths],
        wait_boot: 30_000
      })

    ExUnit.Callbacks.on_exit(fn -> stop_peer(peer) end)
    true = Node.connect(node)
    {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:snakeport], 30_000)
    os_pid = :peer.call(peer, :os, :getpid, []) |> List.to_integer()
    peer = %{peer: peer, node: node, os_pid: os_pid}

    if instance do
      start_instance(peer, instance, opts)
    end

    peer
  end

  @doc "Starts the instance `instance` on `peer` (under the application's supervisor there)."
  def start_instance(peer, instance, opts \\ []) do
    opts = Keyword.merge(Snakeport.Case.base_opts(), [name: instance] ++ opts)

    {:ok, _} =
      :peer.call(
        peer.peer,
        Supervisor,
        :start_child,
        [Snakeport.Application.Supervisor, {Snakeport, opts}],
        60_000
      )

    :ok
  end

  @doc "Stops the instance `instance` on `peer`."
  def stop_instance(peer, instance) do
    :ok =
      :peer.call(
        peer.peer,
        Supervisor,
        :terminate_child,
        [Snakeport.Application.Supervisor, instance],
        30_000
      )

    :ok =
      :peer.call(
        peer.peer,
        Supervisor,
        :delete_child,
        [Snakeport.Application.Supervisor, instance],
        30_000
      )
  end

  @doc "Runs `apply(m, f, a)` on the peer (in a short-lived process there)."
  def on(peer, m, f, a, timeout \\ 30_000), do: :peer.call(peer.peer, m, f, a, timeout)

  @doc "Stops a peer (idempotent)."
  def stop_peer(%{peer: peer}), do: stop_peer(peer)

  def stop_peer(peer) when is_pid(peer) do
    if Process.alive?(peer), do: :peer.stop(peer)
    :ok
  catch
    :exit, _ -> :ok
  end

  @doc """
  Waits until `node` is a member of the cluster of `instance` as this node sees it, with
  an available worker (placement can choose it).
  """
  def await_member(instance, node, timeout \\ 10_000) do
    Snakeport.Case.eventually(
      fn ->
        {:ok, inst} = Snakeport.Instance.fetch(instance)
        node in Snakeport.Cluster.others(inst) and has_workers?(inst, node)
      end,
      timeout
    )
  end

  @doc "Waits until `node` runs `instance` as this node sees it (with or without workers)."
  def await_node(instance, node, timeout \\ 10_000) do
    Snakeport.Case.eventually(
      fn ->
        {:ok, inst} = Snakeport.Instance.fetch(instance)
        node in Snakeport.Cluster.others(inst)
      end,
      timeout
    )
  end

  defp has_workers?(inst, node) do
    case :ets.lookup(inst.cluster_table, node) do
      [{^node, _, %{workers: [_ | _]}}] -> true
      _ -> false
    end
  end

  @doc """
  Starts a process on `node` that serves `run/3` requests (an MFA each, run in that
  process, so that it owns the sessions its calls adopt) until `halt/1`. Returns its pid.
  """
  def owner(node) do
    pid = Node.spawn(node, __MODULE__, :owner_loop, [])
    true = is_pid(pid)
    pid
  end

  @doc false
  def owner_loop do
    receive do
      {:run, {m, f, a}, from, tag} ->
        send(from, {tag, apply(m, f, a)})
        owner_loop()

      :halt ->
        :ok
    end
  end

  @doc "Runs `apply(m, f, a)` in an owner process (see `owner/1`) and returns its result."
  def run(pid, mfa, timeout \\ 30_000) do
    tag = make_ref()
    send(pid, {:run, mfa, self(), tag})

    receive do
      {^tag, result} -> result
    after
      timeout -> flunk("owner #{inspect(pid)} did not answer #{inspect(mfa)}")
    end
  end

  @doc "Stops an owner process and waits for its end."
  def halt(pid) do
    mref = Process.monitor(pid)
    send(pid, :halt)

    receive do
      {:DOWN, ^mref, :process, ^pid, _} -> :ok
    after
      10_000 -> flunk("owner #{inspect(pid)} did not stop")
    end
  end

  @doc "Kills an OS process with SIGKILL (a real signal) and waits for `kill` to return."
  def kill9(os_pid) do
    {_, 0} = System.cmd("kill", ["-9", Integer.to_string(os_pid)])
    :ok
  end

  @doc "Refs held in Python by the workers of `instance` on this node (no other node asked)."
  def local_refs(instance) do
    {:ok, %{refs: refs}} = Snakeport.stats(instance: instance, cluster: false)
    refs
  end

  @doc "Refs held in Python by the workers of `instance` on `peer`."
  def peer_refs(peer, instance) do
    {:ok, %{refs: refs}} = on(peer, Snakeport, :stats, [[instance: instance, cluster: false]])
    refs
  end

  @doc "Sessions homed on `peer` (its own, not routes)."
  def peer_sessions(peer, instance) do
    {:ok, %{sessions: n}} = on(peer, Snakeport, :stats, [[instance: instance, cluster: false]])
    n
  end

  @doc "A tool (for `tools:` on a peer): the name of the node it runs on."
  def where_tool(_kwargs, _ctx), do: Atom.to_string(node())

  @doc "A tool that calls back into Python, in the call's session."
  def back_tool(%{"x" => x}, ctx),
    do: Snakeport.call!("builtins", "abs", [x], instance: ctx.instance)
end
