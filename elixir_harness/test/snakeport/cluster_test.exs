defmodule Snakeport.ClusterTest do
  # Several nodes running one instance: real peer VMs (:peer) on this machine, each with
  # its own Python worker; this VM is node A. See Snakeport.ClusterCase.
  use Snakeport.Case, async: false

  import Snakeport.ClusterCase

  @moduletag timeout: 180_000

  @mod "snakeport_harness_testmod"

  # A call that waits `seconds` in Python without using a CPU (asyncio.sleep: cancellable).
  defp nap(seconds, opts), do: Snakeport.call(@mod, "nap", [seconds, "done"], opts)

  defp ms_since(t0), do: System.monotonic_time(:millisecond) - t0

  defp in_flight(peer) do
    {:ok, %{in_flight: n}} = on(peer, Snakeport, :stats, [[instance: @instance, cluster: false]])
    n
  end

  describe "a node without workers (pool_size: 0)" do
    @tag snakeport: [pool_size: 0]
    test "places its sessions on another node's worker, and its owners' deaths release them there" do
      id =
        capture_events([[:snakeport, :call, :stop], [:snakeport, :cluster, :node_up]], @instance)

      b = start_peer(:b, @instance)
      await_member(@instance, b.node)

      assert_receive {:event, [:snakeport, :cluster, :node_up], _, %{node: node}}
                     when node == b.node

      _ = id

      {owner, {:ok, counter}} =
        start_owner(fn ->
          Snakeport.call("collections", "Counter", [["a", "b", "a"]],
            instance: @instance,
            result: :ref
          )
        end)

      # The ref names the worker's node; a call on it from here reaches that worker.
      assert %Ref{node: node} = counter
      assert node == b.node

      assert run_in(owner, fn ->
               Snakeport.method(counter, "most_common", [1], instance: @instance)
             end) ==
               {:ok, [{"a", 2}]}

      assert_receive {:event, [:snakeport, :call, :stop], _, %{node: node, session_id: sid}}
                     when node == b.node and sid == counter.session_id

      # The session lives on B (its store is its home; this node keeps a route).
      {:ok, info} = Snakeport.session_info(counter.session_id, instance: @instance)
      assert info.node == b.node
      assert owner in info.owners
      assert peer_refs(b, @instance) == 1
      assert peer_sessions(b, @instance) == 1

      # The cluster view: this node (no worker) and B (one).
      {:ok, stats} = Snakeport.stats(instance: @instance)
      assert stats.node == node() and stats.pool_size == 0 and stats.sessions == 0
      assert stats.cluster.pool_size == 1 and stats.cluster.sessions == 1
      assert stats.cluster.refs == 1

      assert [%{node: b_node, status: :up, workers: [%{node: b_node, index: 0}]}] =
               Enum.reject(stats.cluster.nodes, &(&1.node == node()))

      assert b_node == b.node

      # The owner (on this node) dies: B releases the session in Python.
      stop(owner)
      eventually(fn -> peer_refs(b, @instance) == 0 and peer_sessions(b, @instance) == 0 end)
      eventually(fn -> released?(counter.session_id, @instance) end)

      assert {:error, %Error{reason: :ref_released}} =
               Snakeport.method(counter, "most_common", [], instance: @instance)
    end

    @tag snakeport: [pool_size: 0]
    test "streams and tools of a session on another node" do
      tools = [where: &where_tool/2, back: &back_tool/2]
      b = start_peer(:b, @instance, tools: tools)
      await_member(@instance, b.node)

      # A stream pulled from here, halted early: its iterator is closed there.
      stream = Snakeport.stream(@mod, "counting", [100], instance: @instance, batch_size: 2)
      assert Enum.take(stream, 3) == [0, 1, 2]
      assert peer_refs(b, @instance) == 0

      # Python there calls the tools of its own node; one calls back into Python.
      assert {:ok, where} = Snakeport.call(@mod, "tool", ["where"], instance: @instance)
      assert where == Atom.to_string(b.node)

      assert {:ok, 3} =
               Snakeport.call(@mod, "tool", ["back"], kwargs: [x: -3], instance: @instance)
    end
  end

  describe "refs across nodes" do
    test "a ref made on one node is used from another, both ways, and its session lives while an owner does" do
      b = start_peer(:b, @instance)
      await_member(@instance, b.node)

      # A process of B makes a ref in its own auto-session, on B's worker.
      ob = owner(b.node)

      {:ok, ref_b} =
        run(
          ob,
          {Snakeport, :call,
           ["collections", "Counter", [["x", "y", "x"]], [instance: @instance, result: :ref]]}
        )

      assert ref_b.node == b.node

      # Sent to this node: method/4 here reaches B's worker; this process becomes an owner.
      assert {:ok, [{"x", 2}]} = Snakeport.method(ref_b, "most_common", [1], instance: @instance)
      {:ok, info} = Snakeport.session_info(ref_b.session_id, instance: @instance)
      assert info.node == b.node
      assert Enum.sort(info.owners) == Enum.sort([ob, self()])

      # Its first owner (on B) ends: the session stays, this process still owns it.
      halt(ob)
      assert {:ok, 3} = Snakeport.method(ref_b, "total", [], instance: @instance)
      assert :ok = Snakeport.set_attr(ref_b, "label", "kept", instance: @instance)
      assert {:ok, "kept"} = Snakeport.get_attr(ref_b, "label", instance: @instance)

      # The other way: a ref of this node's worker, used by a process of B.
      {:ok, ref_a} =
        Snakeport.call("collections", "Counter", [["p"]], instance: @instance, result: :ref)

      assert ref_a.node == node()
      ob2 = owner(b.node)

      assert {:ok, [{"p", 1}]} =
               run(ob2, {Snakeport, :method, [ref_a, "most_common", [], [instance: @instance]]})

      # A ref passed as an argument: the call runs in the ref's session, on its node.
      assert {:ok, 1} =
               run(ob2, {Snakeport, :call, ["builtins", "len", [ref_a], [instance: @instance]]})

      # release_ref from B of this node's ref.
      assert :ok = run(ob2, {Snakeport, :release_ref, [ref_a, [instance: @instance]]})

      assert {:error, %Error{reason: :ref_released}} =
               Snakeport.method(ref_a, "most_common", [], instance: @instance)

      # B goes: its ref answers :session_lost at once (no call timeout). A call made
      # before this node's store has seen B's workers go (their :DOWN races with this
      # process's own :nodedown) reaches the dead connection and answers :worker_exited
      # (:noconnection, "while this request was in flight"); every call after answers
      # :session_lost. Neither waits for the 30 s timeout.
      Node.monitor(b.node, true)
      stop_peer(b)
      assert_receive {:nodedown, node} when node == b.node, 10_000
      t0 = System.monotonic_time(:millisecond)

      details =
        Snakeport.Case.eventually(fn ->
          case Snakeport.method(ref_b, "most_common", [], instance: @instance, timeout: 30_000) do
            {:error, %Error{reason: :session_lost, details: details}} ->
              details

            {:error, %Error{reason: :worker_exited, details: %{reason: :noconnection} = d}} ->
              assert d.node == b.node
              false
          end
        end)

      assert details.node == b.node
      assert ms_since(t0) < 5_000
    end
  end

  describe "owners on another node" do
    @tag snakeport: [pool_size: 1]
    test "the death of an owner, or of its whole node (stop, kill -9), releases its sessions here" do
      c = start_peer(:c, @instance, pool_size: 0)
      d = start_peer(:d, @instance, pool_size: 0)
      await_node(@instance, c.node)
      await_node(@instance, d.node)

      make =
        {Snakeport, :call,
         ["collections", "Counter", [["a"]], [instance: @instance, result: :ref]]}

      # Owners on C and D; their sessions on this node's worker (they have none).
      oc1 = owner(c.node)
      oc2 = owner(c.node)
      od = owner(d.node)
      {:ok, r1} = run(oc1, make)
      {:ok, r2} = run(oc2, make)
      {:ok, r3} = run(od, make)
      assert Enum.all?([r1, r2, r3], &(&1.node == node()))
      assert local_refs(@instance) == 3

      # One owner process exits (its node stays).
      halt(oc1)
      eventually(fn -> released?(r1.session_id, @instance) end)
      assert local_refs(@instance) == 2

      # Node C is killed with SIGKILL: a nodedown counts as its owners' deaths.
      kill9(c.os_pid)
      eventually(fn -> released?(r2.session_id, @instance) end)
      assert local_refs(@instance) == 1

      # Node D is stopped in order.
      stop_peer(d)
      eventually(fn -> released?(r3.session_id, @instance) end)
      eventually(fn -> local_refs(@instance) == 0 end)
    end
  end

  describe "the worker's node goes down" do
    @tag snakeport: [pool_size: 0]
    test "stopped: calls in flight fail at once, its sessions answer :session_lost" do
      worker_node_goes(fn b -> stop_peer(b) end)
    end

    @tag snakeport: [pool_size: 0]
    test "killed with SIGKILL: the same" do
      worker_node_goes(fn b -> kill9(b.os_pid) end)
    end

    @tag snakeport: [pool_size: 0]
    test "disconnected: the same here, and there its owners here count as dead" do
      b = worker_node_goes(fn b -> Node.disconnect(b.node) end)
      # B is still running; it released the sessions of this node's owners in Python.
      eventually(fn -> peer_refs(b, @instance) == 0 and peer_sessions(b, @instance) == 0 end)
    end
  end

  describe "the worker of another node dies (its node stays)" do
    @tag snakeport: [pool_size: 0]
    test "calls in flight fail at once, its sessions answer :session_lost, new calls go to its replacement" do
      capture_events([[:snakeport, :session, :lost]], @instance)
      b = start_peer(:b, @instance)
      await_member(@instance, b.node)
      parent = self()

      {:ok, ref} =
        Snakeport.call("collections", "Counter", [["k"]], instance: @instance, result: :ref)

      assert ref.node == b.node

      # A call in flight (30 s) in another process when B's Python worker is killed.
      caller =
        Task.async(fn ->
          t = System.monotonic_time(:millisecond)
          result = nap(30, instance: @instance, timeout: 60_000)
          send(parent, {:took, ms_since(t)})
          result
        end)

      eventually(fn -> in_flight(b) == 1 end)

      {:ok, %{workers: [%{os_pid: os_pid}]}} =
        on(b, Snakeport, :stats, [[instance: @instance, cluster: false]])

      kill9(os_pid)

      assert {:error, %Error{reason: :worker_exited}} = Task.await(caller, 20_000)
      assert_receive {:took, took}
      assert took < 10_000

      # This node's route to the session is marked lost, and says which node it was on.
      assert_receive {:event, [:snakeport, :session, :lost], %{count: _},
                      %{node: node, session_ids: ids}}
                     when node == b.node,
                     10_000

      assert ref.session_id in ids

      assert {:error, %Error{reason: :session_lost, details: %{node: node}}} =
               Snakeport.method(ref, "most_common", [], instance: @instance)

      assert node == b.node

      # A call without refs gets a new auto-session, on B's restarted worker (this node has
      # none; until B's replacement is up, the call answers :no_workers).
      eventually(
        fn ->
          match?(
            {:ok, %Ref{}},
            Snakeport.call("builtins", "object", [], instance: @instance, result: :ref)
          )
        end,
        20_000
      )

      {:ok, again} = Snakeport.call("builtins", "object", [], instance: @instance, result: :ref)
      assert again.node == b.node
      assert again.session_id != ref.session_id
    end
  end

  describe "a node that does not answer (SIGSTOP)" do
    @tag snakeport: [pool_size: 1]
    test "stats/1 lists it as :unreachable within its deadline; calls there end at their timeout" do
      b = start_peer(:b, @instance)
      await_member(@instance, b.node)

      {:ok, ref} =
        Snakeport.call("collections", "Counter", [["k"]],
          instance: @instance,
          result: :ref,
          placement: {:node, b.node}
        )

      assert ref.node == b.node
      {_, 0} = System.cmd("kill", ["-STOP", Integer.to_string(b.os_pid)])
      # (Runs before the peer is stopped: on_exit callbacks run last registered first.)
      on_exit(fn -> System.cmd("kill", ["-CONT", Integer.to_string(b.os_pid)]) end)

      t0 = System.monotonic_time(:millisecond)
      assert {:ok, stats} = Snakeport.stats(instance: @instance, timeout: 300)
      assert ms_since(t0) < 5_000

      assert [%{node: node, status: :unreachable}] =
               Enum.reject(stats.cluster.nodes, &(&1.node == node()))

      assert node == b.node
      # The sums count the nodes that answered: this one.
      assert stats.cluster.pool_size == 1

      t1 = System.monotonic_time(:millisecond)

      assert {:error, %Error{reason: :timeout}} =
               Snakeport.method(ref, "most_common", [], instance: @instance, timeout: 300)

      assert ms_since(t1) < 5_000

      # It runs again: the same ref works, and the cluster view has it back.
      {_, 0} = System.cmd("kill", ["-CONT", Integer.to_string(b.os_pid)])

      assert {:ok, [{"k", 1}]} =
               Snakeport.method(ref, "most_common", [], instance: @instance, timeout: 10_000)

      {:ok, stats} = Snakeport.stats(instance: @instance)
      assert stats.cluster.pool_size == 2
      assert Enum.all?(stats.cluster.nodes, &(&1.status == :up))
    end
  end

  defp worker_node_goes(down) do
    b = start_peer(:b, @instance)
    await_member(@instance, b.node)
    parent = self()

    SessionContext.with_session([session_id: "kept", instance: @instance], fn ->
      {:ok, ref} =
        Snakeport.call("collections", "Counter", [["k"]], instance: @instance, result: :ref)

      assert ref.node == b.node

      # A call in flight (30 s) in another process, when B goes.
      caller =
        Task.async(fn ->
          t = System.monotonic_time(:millisecond)
          result = nap(30, instance: @instance, timeout: 60_000)
          send(parent, {:took, ms_since(t)})
          result
        end)

      eventually(fn -> in_flight(b) == 1 end)
      down.(b)

      assert {:error, %Error{reason: :worker_exited}} = Task.await(caller, 20_000)
      assert_receive {:took, took}
      assert took < 10_000

      # The session of this process answers :session_lost (at once).
      eventually(fn ->
        match?(
          {:error, %Error{reason: :session_lost}},
          Snakeport.method(ref, "most_common", [], instance: @instance)
        )
      end)

      t0 = System.monotonic_time(:millisecond)

      assert {:error, %Error{reason: :session_lost}} =
               Snakeport.call("builtins", "len", [[1]], instance: @instance, timeout: 30_000)

      assert ms_since(t0) < 5_000
    end)

    b
  end

  describe "membership" do
    @tag snakeport: [pool_size: 1, placement: :any]
    test "a node that joins during a run takes new sessions (:any), without restarts" do
      capture_events(
        [[:snakeport, :cluster, :node_up], [:snakeport, :cluster, :node_down]],
        @instance
      )

      parent = self()

      # New sessions, one after the other, each in a process of its own, until one lands
      # on another node; every call must succeed.
      runner =
        Task.async(fn ->
          Stream.repeatedly(fn ->
            task =
              Task.async(fn ->
                {:ok, ref} =
                  Snakeport.call("builtins", "object", [], instance: @instance, result: :ref)

                ref.node
              end)

            node = Task.await(task, 15_000)
            send(parent, {:placed, node})
            node
          end)
          |> Enum.find(&(&1 != node()))
        end)

      assert_receive {:placed, node}, 10_000
      assert node == node()
      b = start_peer(:b, @instance)

      assert_receive {:event, [:snakeport, :cluster, :node_up], _, %{node: n}} when n == b.node,
                     15_000

      assert Task.await(runner, 30_000) == b.node

      # It leaves: new sessions stay here.
      stop_peer(b)

      assert_receive {:event, [:snakeport, :cluster, :node_down], _, %{node: n}} when n == b.node,
                     15_000

      for _ <- 1..3 do
        task =
          Task.async(fn ->
            Snakeport.call("builtins", "object", [], instance: @instance, result: :ref)
          end)

        assert {:ok, %Ref{node: node}} = Task.await(task)
        assert node == node()
      end
    end
  end

  describe "an instance that stops on a node (the node stays)" do
    @tag snakeport: [pool_size: 0]
    test "leaves the pool (its sessions lost here), and joins again when it restarts" do
      capture_events(
        [[:snakeport, :cluster, :node_up], [:snakeport, :cluster, :node_down]],
        @instance
      )

      b = start_peer(:b, @instance)
      c = start_peer(:c, @instance)
      await_member(@instance, b.node)
      await_member(@instance, c.node)

      where = fn placement ->
        task =
          Task.async(fn ->
            Snakeport.call("builtins", "object", [],
              instance: @instance,
              result: :ref,
              placement: placement
            )
          end)

        case Task.await(task) do
          {:ok, ref} -> ref.node
          {:error, error} -> error.reason
        end
      end

      {:ok, ref} =
        Snakeport.call("collections", "Counter", [["k"]],
          instance: @instance,
          result: :ref,
          placement: {:node, b.node}
        )

      assert ref.node == b.node

      stop_instance(b, @instance)

      assert_receive {:event, [:snakeport, :cluster, :node_down], _, %{node: n}}
                     when n == b.node,
                     10_000

      eventually(fn ->
        match?(
          {:error, %Error{reason: :session_lost}},
          Snakeport.method(ref, "most_common", [], instance: @instance)
        )
      end)

      assert where.({:node, b.node}) == :no_workers
      assert Enum.uniq(for _ <- 1..3, do: where.(:any)) == [c.node]

      # Started again there: picked up here without a restart of this node's instance.
      start_instance(b, @instance)

      assert_receive {:event, [:snakeport, :cluster, :node_up], _, %{node: n}}
                     when n == b.node,
                     15_000

      await_member(@instance, b.node)
      assert where.({:node, b.node}) == b.node
    end
  end

  describe "placement" do
    @tag snakeport: [pool_size: 0]
    test "by node, by tag, least loaded (:any), for calls, contexts and store sessions" do
      b = start_peer(:b, @instance, tags: [:gpu])
      c = start_peer(:c, @instance)
      await_member(@instance, b.node)
      await_member(@instance, c.node)

      where = fn opts ->
        task =
          Task.async(fn ->
            Snakeport.call("builtins", "object", [], [instance: @instance, result: :ref] ++ opts)
          end)

        case Task.await(task) do
          {:ok, ref} -> ref.node
          {:error, error} -> error
        end
      end

      assert where.(placement: {:tags, [:gpu]}) == b.node
      assert where.(placement: [tags: [:gpu]]) == b.node
      assert where.(placement: {:node, c.node}) == c.node
      assert where.(placement: [node: b.node]) == b.node
      assert %Error{reason: :no_workers} = where.(placement: {:tags, [:tpu]})
      assert %Error{reason: :no_workers} = where.(placement: {:node, :nowhere@nohost})

      # One process, two placements: an auto-session for each.
      assert {:ok, rb} =
               Snakeport.call("builtins", "object", [],
                 instance: @instance,
                 result: :ref,
                 placement: {:node, b.node}
               )

      assert {:ok, rc} =
               Snakeport.call("builtins", "object", [],
                 instance: @instance,
                 result: :ref,
                 placement: {:node, c.node}
               )

      assert {rb.node, rc.node} == {b.node, c.node}
      assert rb.session_id != rc.session_id

      # :any spreads new sessions over the least loaded nodes.
      nodes = for _ <- 1..4, do: where.(placement: :any)
      assert Enum.sort(Enum.uniq(nodes)) == Enum.sort([b.node, c.node])

      # A context's placement.
      SessionContext.with_session([instance: @instance, placement: {:tags, [:gpu]}], fn ->
        {:ok, ref} = Snakeport.call("builtins", "object", [], instance: @instance, result: :ref)
        assert ref.node == b.node
        {:ok, info} = Snakeport.session_info(SessionContext.current(@instance))
        assert info.node == b.node
      end)

      assert_raise ArgumentError, ~r/expected :placement to be/, fn ->
        Snakeport.call("builtins", "object", [], instance: @instance, placement: :nearest)
      end

      # A store session, made from here on C, read and written from here.
      alias Snakeport.SessionStore

      {:ok, s} =
        SessionStore.create_session("store-1", instance: @instance, placement: {:node, c.node})

      assert s.node == c.node

      assert {:error, :already_exists} =
               SessionStore.create_session("store-1", instance: @instance)

      assert :ok = SessionStore.put_state("store-1", :k, 42, instance: @instance)
      assert {:ok, 42} = SessionStore.get_state("store-1", :k, instance: @instance)
      assert {:ok, 42} = on(c, SessionStore, :get_state, ["store-1", :k, [instance: @instance]])
      assert {:ok, %{node: node}} = SessionStore.get_session("store-1", instance: @instance)
      assert node == c.node

      assert {:ok, 2} =
               Snakeport.call("builtins", "len", [[1, 2]], instance: @instance, session: "store-1")

      assert :ok = SessionStore.delete_session("store-1", instance: @instance)

      assert {:error, :not_found} =
               on(c, SessionStore, :get_session, ["store-1", [instance: @instance]])

      assert {:error, :not_found} = SessionStore.get_session("store-1", instance: @instance)
    end

    @tag snakeport: [pool_size: 1]
    test "an explicit session id that another node has is that node's session" do
      b = start_peer(:b, @instance)
      await_member(@instance, b.node)

      ob = owner(b.node)
      opts = [instance: @instance, session: "shared-1", result: :ref]
      {:ok, ref} = run(ob, {Snakeport, :call, ["collections", "Counter", [["s"]], opts]})
      assert ref.node == b.node

      # This node's default placement would be local (it has a worker): the id is found on
      # B instead, and this process joins that session.
      assert {:ok, [{"s", 1}]} =
               Snakeport.method(ref, "most_common", [], instance: @instance, session: "shared-1")

      assert {:ok, 1} =
               Snakeport.call("builtins", "len", [[0]], instance: @instance, session: "shared-1")

      assert local_refs(@instance) == 0
      {:ok, info} = Snakeport.session_info("shared-1", instance: @instance)
      assert info.node == b.node
      assert Enum.sort(info.owners) == Enum.sort([ob, self()])
      assert {:ok, 1} = Snakeport.release_session("shared-1", instance: @instance)
      eventually(fn -> peer_sessions(b, @instance) == 0 end)
      assert released?("shared-1", @instance)

      # Released by its home (here, from B): this node forgets its route, so that the next
      # call with that id opens a new session instead of failing on the old one.
      assert {:ok, 1} =
               Snakeport.call("builtins", "len", [[0]],
                 instance: @instance,
                 session: "shared-2",
                 placement: {:node, b.node}
               )

      assert {:ok, 0} = on(b, Snakeport, :release_session, ["shared-2", [instance: @instance]])
      eventually(fn -> Snakeport.Sessions.lookup(inst(@instance), "shared-2") == :not_found end)

      assert {:ok, 1} =
               Snakeport.call("builtins", "len", [[0]], instance: @instance, session: "shared-2")

      assert {:ok, %{node: node}} = Snakeport.session_info("shared-2", instance: @instance)
      assert node == node()
    end
  end

  describe "callers of another node" do
    @tag snakeport: [pool_size: 0]
    test "one that times out, or dies, has its call cancelled in the worker there" do
      b = start_peer(:b, @instance)
      await_member(@instance, b.node)

      t0 = System.monotonic_time(:millisecond)
      assert {:error, %Error{reason: :timeout}} = nap(30, instance: @instance, timeout: 300)
      eventually(fn -> in_flight(b) == 0 end)
      assert ms_since(t0) < 10_000

      # The same session still works.
      assert {:ok, "done"} = nap(0.01, instance: @instance)

      # A caller that dies, in a session that outlives it (this process owns it too): only
      # the courier there, which watches callers of other nodes, can cancel its call.
      opts = [instance: @instance, session: "outlives"]
      assert {:ok, "done"} = nap(0.01, opts)
      caller = spawn(fn -> nap(30, Keyword.put(opts, :timeout, 60_000)) end)
      eventually(fn -> in_flight(b) == 1 end)
      t1 = System.monotonic_time(:millisecond)
      Process.exit(caller, :kill)
      eventually(fn -> in_flight(b) == 0 end)
      assert {:ok, %{node: node}} = Snakeport.session_info("outlives", instance: @instance)
      assert node == b.node
      assert ms_since(t1) < 10_000
    end
  end
end
