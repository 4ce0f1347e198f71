defmodule Snakeport.CallsTest do
  use Snakeport.Case, async: true

  @mod "snakeport_harness_testmod"

  describe "calls in the auto-session" do
    test "operator.add, module and function as strings or atoms" do
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
      assert {:ok, 3} = Snakeport.call(:operator, :add, [1, 2], instance: @instance)
      assert 7 = Snakeport.call!("operator", "add", [3, 4], instance: @instance)
      assert {:ok, 8.0} = Snakeport.call("math", "pow", [2, 3], instance: @instance)
      assert {:ok, "/"} = Snakeport.call("os.path", "join", ["/"], instance: @instance)
    end

    test "kwargs as keyword list or map, dotted function paths, module attributes" do
      assert {:ok, [3, 2, 1]} =
               Snakeport.call("builtins", "sorted", [[3, 1, 2]],
                 kwargs: [reverse: true],
                 instance: @instance
               )

      assert {:ok, [3, 2, 1]} =
               Snakeport.call("builtins", "sorted", [[3, 1, 2]],
                 kwargs: %{"reverse" => true},
                 instance: @instance
               )

      assert {:ok, "3.5"} = Snakeport.call("builtins", "str", [3.5], instance: @instance)
      assert {:ok, pi} = Snakeport.get_attr("math", "pi", instance: @instance)
      assert_in_delta pi, 3.14159, 1.0e-5

      assert {:ok, "{\"a\": 1}"} =
               Snakeport.call("json", "dumps", [%{"a" => 1}], instance: @instance)

      assert {:ok, true} = Snakeport.call("os.path", "isabs", ["/tmp"], instance: @instance)
    end

    test "each process gets its own auto-session" do
      {:ok, r1} = Snakeport.call(@mod, "Box", [1], instance: @instance)

      {:ok, r2} =
        Task.async(fn -> Snakeport.call(@mod, "Box", [2], instance: @instance) end)
        |> Task.await()

      assert r1.session_id != r2.session_id
      assert String.starts_with?(r1.session_id, "auto-")
    end
  end

  describe "values" do
    test "Elixir <-> Python round trips (structs travel as maps and come back as structs)" do
      values = [
        1,
        -5,
        2 ** 100,
        1.5,
        "text é",
        true,
        false,
        nil,
        :ok,
        [1, [2, 3]],
        {1, "two", 3.0},
        %{"a" => 1, 2 => [3]},
        %{atom_key: 1},
        [1 | 2],
        ~c"chars",
        self(),
        make_ref(),
        URI.parse("https://example.org/x")
      ]

      for value <- values do
        assert {:ok, ^value} = Snakeport.call(@mod, "echo", [value], instance: @instance)
      end
    end

    test "bytes, sets, non-UTF-8 binaries" do
      assert {:ok, "abc"} =
               Snakeport.call(@mod, "echo", [Snakeport.bytes("abc")], instance: @instance)

      assert {:ok, %Ref{} = bytes_type} =
               Snakeport.get_attr("builtins", "bytes", instance: @instance)

      assert {:ok, true} =
               Snakeport.call("builtins", "isinstance", [Snakeport.bytes("abc"), bytes_type],
                 instance: @instance
               )

      assert {:ok, false} =
               Snakeport.call("builtins", "isinstance", ["abc", bytes_type], instance: @instance)

      assert {:ok, <<255, 0>>} = Snakeport.call(@mod, "echo", [<<255, 0>>], instance: @instance)

      assert {:ok, %MapSet{} = set} =
               Snakeport.call("builtins", "set", [[1, 2, 2]], instance: @instance)

      assert set == MapSet.new([1, 2])

      assert {:ok, 3} =
               Snakeport.call("builtins", "len", [MapSet.new([1, 2, 3])], instance: @instance)

      assert {:ok, %MapSet{}} =
               Snakeport.call("builtins", "frozenset", [["a"]], instance: @instance)
    end

    test "large binaries travel both ways" do
      big = :binary.copy(<<1, 2, 3, 255>>, 262_144)

      assert {:ok, 1_048_576} =
               Snakeport.call("builtins", "len", [Snakeport.bytes(big)], instance: @instance)

      assert {:ok, ^big} = Snakeport.call(@mod, "echo", [big], instance: @instance)

      assert {:ok, ^big} =
               Snakeport.call(@mod, "echo", [],
                 kwargs: [value: Snakeport.bytes(big)],
                 instance: @instance
               )

      assert {:ok, [^big, 1]} = Snakeport.call(@mod, "echo", [[big, 1]], instance: @instance)
    end
  end

  @tag snakeport: [max_frame_bytes: 4096]
  test "a request above the worker's frame limit is refused before it is sent" do
    assert {:error, %Error{reason: :frame_too_large, details: %{limit: 4096}}} =
             Snakeport.call(@mod, "echo", [:binary.copy("x", 5000)], instance: @instance)

    assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
  end

  describe "refs" do
    test "collections.Counter and io.StringIO held as refs, used through methods" do
      assert {:ok, %Ref{type: "collections.Counter"} = counter} =
               Snakeport.call("collections", "Counter", [["a", "b", "a"]],
                 result: :ref,
                 instance: @instance
               )

      assert {:ok, [{"a", 2}]} = Snakeport.method(counter, "most_common", [1])
      assert {:ok, nil} = Snakeport.method(counter, "update", [["b", "b"]])
      assert {:ok, [{"b", 3}]} = Snakeport.method(counter, :most_common, [1])

      assert {:ok, %Ref{type: "_io.StringIO"} = buf} =
               Snakeport.call("io", "StringIO", [], instance: @instance)

      assert {:ok, 5} = Snakeport.method(buf, "write", ["hello"])
      assert {:ok, 6} = Snakeport.method(buf, "write", [" world"])
      assert {:ok, "hello world"} = Snakeport.method!(buf, "getvalue", []) |> then(&{:ok, &1})

      assert inspect(buf) =~
               ~r/^#Snakeport.Ref<_io.StringIO \d+ @ "auto-\d+(@[^"]+)?" in Snakeport.CallsTest>$/
    end

    test "refs as arguments, nested in containers, and attributes" do
      {:ok, a} = Snakeport.call(@mod, "Box", [1], instance: @instance)
      {:ok, b} = Snakeport.call(@mod, "Box", [2], instance: @instance)
      {:ok, c} = Snakeport.method(a, "add", [b])
      assert {:ok, 3} = Snakeport.method(c, "get")
      assert {:ok, 3} = Snakeport.get_attr(c, "value")
      assert :ok = Snakeport.set_attr(c, "value", 10)
      assert {:ok, 10} = Snakeport.get_attr(c, "value")

      assert {:ok, [%Ref{} = x, %{"k" => %Ref{} = y}]} =
               Snakeport.call(@mod, "echo", [[a, %{"k" => b}]], instance: @instance)

      assert x.id == a.id and y.id == b.id
      assert {:ok, 2} = Snakeport.call("builtins", "len", [[a, b]], instance: @instance)
    end

    test "result: :value refuses objects, result: :ref wraps data" do
      assert {:error, %Error{reason: :not_encodable}} =
               Snakeport.call(@mod, "Box", [1], result: :value, instance: @instance)

      assert {:ok, %Ref{type: "builtins.list"}} =
               Snakeport.call(@mod, "echo", [[1, 2]], result: :ref, instance: @instance)

      assert {:ok, %Ref{type: "types.SimpleNamespace"} = ns} =
               Snakeport.call(@mod, "namespace", [], kwargs: [a: 1], instance: @instance)

      assert {:ok, 1} = Snakeport.get_attr(ns, "a")
    end

    test "release_ref, then the ref fails with :ref_released; release is idempotent" do
      {:ok, ref} = Snakeport.call(@mod, "Box", [1], instance: @instance)
      assert python_refs(@instance) == 1
      assert :ok = Snakeport.release_ref(ref)
      assert python_refs(@instance) == 0
      assert {:error, %Error{reason: :ref_released}} = Snakeport.method(ref, "get")
      assert :ok = Snakeport.release_ref(ref)
      assert :ok = Snakeport.release_ref!(ref)
    end
  end

  describe "errors" do
    test "a Python exception becomes %Snakeport.Error{} with type, message and traceback" do
      assert {:error, %Error{reason: :python_error} = error} =
               Snakeport.call("operator", "truediv", [1, 0], instance: @instance)

      assert error.python_type == "builtins.ZeroDivisionError"
      assert error.message =~ "division by zero"
      assert Exception.message(error) =~ "builtins.ZeroDivisionError: division by zero"

      assert {:error, %Error{reason: :python_error} = error} =
               Snakeport.call(@mod, "nested_fail", [3], instance: @instance)

      assert error.python_type == "builtins.KeyError"
      assert Enum.any?(error.traceback, &(&1 =~ "nested_fail"))

      error =
        assert_raise Error, fn -> Snakeport.call!(@mod, "fail", ["boom"], instance: @instance) end

      assert error.python_type == "builtins.ValueError"
      assert error.message == "boom"
    end

    test "Exception.message/1 shows the traceback as Python prints it, one line per line" do
      assert {:error, %Error{reason: :python_error} = error} =
               Snakeport.call(@mod, "nested_fail", [2], instance: @instance)

      # What Python prints for the same exception (from the function's own frame down, as
      # the worker leaves its own frames out).
      script = """
      import sys, traceback
      from snakeport_harness_testmod import nested_fail
      try:
          nested_fail(2)
      except KeyError as e:
          sys.stdout.write("".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next)))
      """

      {python_text, 0} = System.cmd(python(), ["-c", script], env: [{"PYTHONPATH", python_dir()}])
      assert python_text =~ ~r/^Traceback \(most recent call last\):\n  File .*\n    /

      assert Exception.message(error) ==
               "builtins.KeyError: 'deep'\n\n" <> String.trim_trailing(python_text)
    end

    test "import and attribute errors" do
      assert {:error, %Error{reason: :import_error}} =
               Snakeport.call("no_such_module_xyz", "f", [], instance: @instance)

      assert {:error, %Error{reason: :attribute_error}} =
               Snakeport.call("math", "no_such_function", [], instance: @instance)
    end

    test "bad options raise ArgumentError" do
      assert_raise ArgumentError, ~r/expected :result to be :auto, :ref, :value or :arrow/, fn ->
        Snakeport.call("math", "sqrt", [1], result: :maybe, instance: @instance)
      end

      assert_raise ArgumentError, ~r/unknown keys \[:kwargs\]/, fn ->
        Snakeport.get_attr("math", "pi", kwargs: [], instance: @instance)
      end
    end
  end

  describe "timeouts" do
    test "a call that times out returns :timeout, is cancelled, and the worker still serves" do
      started = System.monotonic_time(:millisecond)

      assert {:error, %Error{reason: :timeout}} =
               Snakeport.call(@mod, "spin", [30], timeout: 200, instance: @instance)

      assert System.monotonic_time(:millisecond) - started < 2_000

      # The worker was told to cancel: the next call does not wait 30 s behind it.
      assert {:ok, 3} =
               Snakeport.call("operator", "add", [1, 2], timeout: 5_000, instance: @instance)

      # The cancelled call's late reply never reaches the caller's mailbox.
      assert {:ok, 0} = Snakeport.call(@mod, "echo", [0], instance: @instance)
      assert {:messages, []} = Process.info(self(), :messages)
    end

    @tag snakeport: [threads: 2]
    test "with two executor threads, a call stuck in C code does not block the others" do
      assert {:error, %Error{reason: :timeout}} =
               Snakeport.call(@mod, "sleep", [3], timeout: 100, instance: @instance)

      started = System.monotonic_time(:millisecond)

      assert {:ok, 3} =
               Snakeport.call("operator", "add", [1, 2], timeout: 5_000, instance: @instance)

      assert System.monotonic_time(:millisecond) - started < 2_000
    end
  end

  describe "the protocol channel" do
    @tag snakeport: [spin_us: 0]
    test "a worker that never polls before reading (spin_us: 0) serves sequential and concurrent calls" do
      for i <- 1..50,
          do: assert({:ok, ^i} = Snakeport.call("operator", "add", [i, 0], instance: @instance))

      1..32
      |> Task.async_stream(&Snakeport.call("operator", "mul", [&1, 2], instance: @instance),
        max_concurrency: 32
      )
      |> Enum.each(fn {:ok, {:ok, n}} -> assert rem(n, 2) == 0 end)
    end

    test "print() and writes to fd 1 inside Python do not disturb anything" do
      assert {:ok, nil} =
               Snakeport.call("builtins", "print", ["hello from builtins.print"],
                 instance: @instance
               )

      assert {:ok, "x"} = Snakeport.call(@mod, "noisy", ["x"], instance: @instance)
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
      assert {:messages, []} = Process.info(self(), :messages)
    end

    test "atoms from the worker are never created: an unknown one fails the call cleanly" do
      name = "snakeport_never_seen_atom_#{System.unique_integer([:positive])}_xyz"
      assert_raise ArgumentError, fn -> :erlang.binary_to_existing_atom(name, :utf8) end

      assert {:error, %Error{reason: :unsafe_term, message: message}} =
               Snakeport.call(@mod, "make_atom", [name], instance: @instance)

      assert message =~ "atom"
      assert_raise ArgumentError, fn -> :erlang.binary_to_existing_atom(name, :utf8) end

      # Known atoms decode; the worker keeps serving.
      assert {:ok, :ok} = Snakeport.call(@mod, "make_atom", ["ok"], instance: @instance)
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)
    end

    test "every protocol atom exists before any frame is decoded" do
      for atom <- Snakeport.Protocol.atoms() do
        assert :erlang.binary_to_existing_atom(Atom.to_string(atom), :utf8) == atom
      end
    end
  end
end
