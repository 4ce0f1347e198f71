defmodule Snakeport.ScienceTest do
  # numpy, pandas, dates and the other converted values, both ways, through the real worker
  # behind a real Port, with real numpy, pandas and scikit-learn (docs/PROTOCOL.md, "Values";
  # the README's type table). Python checks what it received (science_helpers.same/2).
  use Snakeport.Case, async: true
  import ExUnit.CaptureLog

  alias Snakeport.{Array, DataFrame, Decimal, Duration, Extension, Index, Series, UUID}

  @h "science_helpers"

  defp py(source, opts),
    do: Snakeport.call(@h, "eval_", [source], Keyword.put(opts, :instance, @instance))

  defp py!(source, opts \\ []) do
    assert {:ok, value} = py(source, opts)
    value
  end

  # Python's verdict on `value` being `eval_(source)` with its type.
  defp same?(value, source), do: Snakeport.call!(@h, "same", [value, source], instance: @instance)

  defp describe(value), do: Snakeport.call!(@h, "describe", [value], instance: @instance)

  describe "numpy arrays, Python -> Elixir -> Python" do
    @dtypes [
      {"bool", {:u, 8}, "|b1"},
      {"int8", {:s, 8}, nil},
      {"int16", {:s, 16}, nil},
      {"int32", {:s, 32}, nil},
      {"int64", {:s, 64}, nil},
      {"uint8", {:u, 8}, nil},
      {"uint16", {:u, 16}, nil},
      {"uint32", {:u, 32}, nil},
      {"uint64", {:u, 64}, nil},
      {"float16", {:f, 16}, nil},
      {"float32", {:f, 32}, nil},
      {"float64", {:f, 64}, nil},
      {"complex64", {:c, 64}, nil},
      {"complex128", {:c, 128}, nil},
      {">f8", {:f, 64}, ">f8"},
      {">i2", {:s, 16}, ">i2"},
      {"datetime64[ns]", {:s, 64}, "<M8[ns]"},
      {"timedelta64[ms]", {:s, 64}, "<m8[ms]"}
    ]

    @shapes [
      {"1-d", "np.arange(6)", {6}},
      {"2-d", "np.arange(6).reshape(2, 3)", {2, 3}},
      {"empty", "np.arange(0)", {0}},
      {"empty 2-d", "np.arange(0).reshape(3, 0)", {3, 0}},
      {"0-d", "np.array(5)", {}},
      {"non-contiguous", "np.arange(24).reshape(4, 6)[::2, ::3]", {2, 2}},
      {"fortran", "np.asfortranarray(np.arange(6).reshape(2, 3))", {2, 3}},
      {"large", "np.arange(30_000)", {30_000}}
    ]

    for {dtype, type, dtype_str} <- @dtypes do
      @tag dtype: dtype, type: type, dtype_str: dtype_str
      test "#{dtype}: 1-d, 2-d, empty, 0-d, non-contiguous, Fortran order, large", ctx do
        for {shape_name, base, shape} <- @shapes do
          source =
            if ctx.dtype == "bool",
              do: "np.asarray(#{base} % 3 == 1)",
              else: "#{base}.astype(#{inspect(ctx.dtype)})"

          assert %Array{} = array = py!(source)

          assert {array.type, array.shape, array.dtype} == {ctx.type, shape, ctx.dtype_str},
                 shape_name

          assert {:ok, expected} =
                   Snakeport.call(@h, "native_bytes", [source], instance: @instance)

          assert array.data == expected, shape_name
          # Back in Python: the same dtype (byte order, bool, datetime unit), shape, values.
          assert same?(array, source) == true, shape_name
        end
      end
    end

    test "a large array is one sub-binary of the reply frame, sent back as a blob" do
      array = py!("np.linspace(0, 1, 200_000)")
      assert byte_size(array.data) == 1_600_000
      # Not copied out of the frame: the binary it refers to is the frame (term + blob).
      assert :binary.referenced_byte_size(array.data) > byte_size(array.data)
      assert same?(array, "np.linspace(0, 1, 200_000)") == true

      described = describe(array)
      assert described["writeable"] == false and described["owndata"] == false
    end

    test "NaN, infinities and NaT stay in the data" do
      array = py!("np.array([np.nan, np.inf, -np.inf, 1.5])")
      assert Array.to_list(array) == [:nan, :infinity, :neg_infinity, 1.5]

      times = py!("np.array(['2024-01-02', 'NaT'], dtype='M8[s]')")
      assert times.dtype == "<M8[s]"
      assert Array.to_list(times) == [1_704_153_600, -9_223_372_036_854_775_808]
      assert same?(times, "np.array(['2024-01-02', 'NaT'], dtype='M8[s]')") == true
    end

    test "other dtypes are nested lists; dtypes without an Nx type are refs" do
      assert py!("np.array([['a', 'b'], ['c', 'd']])") == [["a", "b"], ["c", "d"]]
      assert py!("np.array([(1, 2.5)], dtype=[('a', 'i4'), ('b', 'f8')])") == [{1, 2.5}]
      assert %Ref{type: "numpy.ndarray"} = py!("np.zeros(2, dtype=np.longdouble)")

      assert {:error, %Error{reason: :not_encodable, details: %{type: "numpy.ndarray"}}} =
               py("np.zeros(2, dtype=np.longdouble)", result: :value)
    end
  end

  describe "Elixir arrays -> Python" do
    test "from_list/2 arrays arrive as read-only ndarrays of their dtype" do
      for {list, type, dtype} <- [
            {[[1, 2, 3], [4, 5, 6]], {:s, 32}, "<i4"},
            {[1.5, :nan, :infinity, :neg_infinity], {:f, 64}, "<f8"},
            {[0.25], {:f, 16}, "<f2"},
            {[{1.0, -2.0}], {:c, 128}, "<c16"},
            {[255, 0], {:u, 8}, "|u1"},
            {7, {:s, 64}, "<i8"},
            {[], {:f, 32}, "<f4"}
          ] do
        described = describe(Array.from_list(list, type))
        assert described["dtype"] == dtype
        assert described["writeable"] == false
        assert Array.from_list(list, type) |> Array.to_list() == list
      end

      assert describe(Array.from_list([true, false], :bool))["tolist"] == [true, false]
      assert describe(Array.from_list([[1, 2], [3, 4]], {:u, 16}))["tolist"] == [[1, 2], [3, 4]]
    end

    test "a large array travels as a blob after the request's term and comes back equal" do
      data = for i <- 1..100_000, into: <<>>, do: <<i * 0.5::float-64-native>>
      array = Array.new(data, {:f, 64}, {100, 1000})

      assert {:ok, %Array{data: ^data, shape: {100, 1000}, type: {:f, 64}}} =
               Snakeport.call(@h, "identity", [array], instance: @instance)

      assert {:ok, mean} = Snakeport.call(@h, "mean_of", [array], instance: @instance)
      assert_in_delta mean, 25_000.25, 1.0e-6
      # Two arrays and a plain binary in one request.
      assert {:ok, [%Array{data: ^data}, "x", %Array{data: ^data}]} =
               Snakeport.call(@h, "identity", [[array, "x", array]], instance: @instance)
    end

    test "Nx's notation round trips: from_binary(data, type) |> reshape(shape) is all Nx needs" do
      array = py!("np.arange(6, dtype=np.float32).reshape(2, 3)")
      # What Nx.from_binary/2 reads: native floats of the type's size, row-major.
      assert for(<<x::float-32-native <- array.data>>, do: x) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
      assert Array.to_list(array) == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    end

    test "malformed arrays are refused: by the harness before sending, by the worker after" do
      assert_raise ArgumentError, ~r/has 3 bytes/, fn ->
        Snakeport.call(@h, "identity", [%Array{type: {:f, 64}, shape: {1}, data: <<1, 2, 3>>}],
          instance: @instance
        )
      end

      assert {:error, %Error{reason: :bad_request, message: message}} =
               Snakeport.call(
                 @h,
                 "identity",
                 [%Array{type: {:bf, 16}, shape: {1}, data: <<0, 0>>}],
                 instance: @instance
               )

      assert message =~ "no numpy dtype"

      assert {:error, %Error{reason: :bad_request}} =
               Snakeport.call(
                 @h,
                 "identity",
                 [%Array{type: {:f, 64}, shape: {1}, data: <<0::64>>, dtype: "<i4"}],
                 instance: @instance
               )
    end
  end

  describe "numpy scalars and the worker's light footprint" do
    @tag snakeport: [pool_size: 1]
    test "plain calls load neither numpy nor pandas; scalars are the numbers they are" do
      assert {:ok, 3} = Snakeport.call("operator", "add", [1, 2], instance: @instance)

      assert {:ok, ~D[2024-01-02]} =
               Snakeport.call(@h, "identity", [~D[2024-01-02]], instance: @instance)

      assert {:ok, []} =
               Snakeport.call(@h, "loaded", [["numpy", "pandas", "pyarrow"]], instance: @instance)

      assert py!("np.float64(1.5)") === 1.5
      assert py!("np.int64(-7)") === -7
      assert py!("np.bool_(True)") === true
      assert py!("np.str_('x')") == "x"
      assert py!("np.float32('nan')") == :nan
      assert py!("np.datetime64('2024-01-02')") == ~D[2024-01-02]
      assert py!("np.datetime64('2024-01-02T03:04:05.000006')") == ~N[2024-01-02 03:04:05.000006]
      assert py!("np.timedelta64(3, 's')") == %Duration{microseconds: 3_000_000}
      assert py!("np.datetime64('NaT')") == nil
    end
  end

  describe "pandas" do
    test "the seed's DataFrame: a working object (a ref), and its mean as a value" do
      SessionContext.with_session([instance: @instance], fn ->
        {:ok, df} = Snakeport.call("pandas", "DataFrame", [[1, 2, 3]], instance: @instance)
        assert %Ref{type: "pandas.DataFrame"} = df
        {:ok, mean} = Snakeport.method(df, "mean", [])
        assert %Ref{type: "pandas.Series"} = mean

        assert {:ok, %Series{name: nil, index: %Index{names: [nil], data: 0..0}, data: data}} =
                 Snakeport.method(df, "mean", [], result: :value)

        assert Array.to_list(data) == [2.0]
      end)
    end

    test "a DataFrame as a value, column by column" do
      source =
        "pd.DataFrame({'n': [1, 2], 'x': [0.5, float('nan')], 's': ['a', None], " <>
          "'t': pd.to_datetime(['2024-01-01', None]).tz_localize('UTC')}, index=pd.Index(['p', 'q'], name='k'))"

      assert %DataFrame{columns: ["n", "x", "s", "t"], index: index, data: [n, x, s, t]} =
               df = py!(source, result: :value)

      assert index == %Index{names: ["k"], data: ["p", "q"]}
      assert Array.to_list(n) == [1, 2]
      assert Array.to_list(x) == [0.5, :nan]
      assert s == ["a", nil]
      assert t == [~U[2024-01-01 00:00:00.000000Z], nil]
      assert DataFrame.column(df, "s") == ["a", nil]
      assert DataFrame.to_columns(df) |> hd() == {"n", [1, 2]}
      # Sent back, it is the same DataFrame.
      assert same?(df, source) == true
    end

    test "Series, Index, RangeIndex and MultiIndex round trip" do
      for source <- [
            "pd.Series([1.5, 2.5], index=['a', 'b'], name='v')",
            "pd.Index([3, 1, 2], name='i')",
            "pd.RangeIndex(2, 11, 3, name='r')",
            "pd.MultiIndex.from_tuples([('a', 1), ('b', 2)], names=['x', 'y'])",
            "pd.DataFrame({'a': np.zeros(20_000)})",
            "pd.DataFrame([[1, 2]], columns=['a', 'a'])"
          ] do
        value = py!(source, result: :value)
        assert same?(value, source) == true, source
      end

      assert %Index{data: 2..8//3} = py!("pd.RangeIndex(2, 11, 3)", result: :value)
    end

    test "what cannot travel names its type" do
      assert {:error, %Error{reason: :not_encodable, details: %{type: "pandas.Period"}}} =
               py("pd.Series([pd.Period('2024-01', 'M')])", result: :value)
    end
  end

  describe "dates, times, durations, decimals, uuids, ranges" do
    test "Python values arrive as Elixir's" do
      assert py!("dt.date(2024, 2, 29)") == ~D[2024-02-29]
      assert py!("dt.time(23, 59, 59, 999999)") == ~T[23:59:59.999999]
      assert py!("dt.datetime(2024, 1, 2, 3, 4, 5, 6)") == ~N[2024-01-02 03:04:05.000006]

      assert py!("dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)") ==
               ~U[2024-01-02 03:04:05.000006Z]

      paris = py!("dt.datetime(2024, 7, 1, 12, tzinfo=zoneinfo.ZoneInfo('Europe/Paris'))")

      assert %DateTime{
               time_zone: "Europe/Paris",
               zone_abbr: "CEST",
               utc_offset: 3600,
               std_offset: 3600
             } = paris

      assert DateTime.to_iso8601(paris) == "2024-07-01T12:00:00.000000+02:00"

      fixed =
        py!("dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30)))")

      assert DateTime.to_iso8601(fixed) == "2024-01-02T00:00:00.000000-05:30"

      assert py!("dt.timedelta(days=-1, microseconds=1)") == %Duration{
               microseconds: -86_399_999_999
             }

      assert py!("decimal.Decimal('-1.50')") == %Decimal{sign: -1, coef: 150, exp: -2}
      assert py!("decimal.Decimal('sNaN')") == %Decimal{sign: 1, coef: :sNaN, exp: 0}

      assert py!("uuid.UUID(int=1)") == %UUID{string: "00000000-0000-0000-0000-000000000001"}
      assert py!("range(10, -3, -4)") == 10..-2//-4
      assert py!("range(3, 3)") |> Enum.to_list() == []
    end

    test "Elixir values arrive as Python's, and round trip" do
      for {value, source} <- [
            {~D[2024-02-29], "dt.date(2024, 2, 29)"},
            {~T[23:59:59.999999], "dt.time(23, 59, 59, 999999)"},
            {~N[2024-01-02 03:04:05.000006], "dt.datetime(2024, 1, 2, 3, 4, 5, 6)"},
            {~U[2024-01-02 03:04:05.000006Z],
             "dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)"},
            {%Duration{microseconds: 1_500_000}, "dt.timedelta(seconds=1.5)"},
            {%Decimal{sign: -1, coef: 0, exp: 0}, "decimal.Decimal('-0')"},
            {%Decimal{sign: 1, coef: 12_345, exp: -3}, "decimal.Decimal('12.345')"},
            {%Decimal{sign: -1, coef: :inf, exp: 0}, "decimal.Decimal('-Infinity')"},
            {%UUID{string: "12345678-1234-5678-1234-567812345678"},
             "uuid.UUID('12345678-1234-5678-1234-567812345678')"},
            {1..10//3, "range(1, 11, 3)"},
            {5..1//-2, "range(5, 0, -2)"}
          ] do
        assert same?(value, source) == true, inspect(value)
        assert {:ok, ^value} = Snakeport.call(@h, "identity", [value], instance: @instance)
      end

      # A DateTime of a zone keeps its zone (and offset) through Python and back.
      paris =
        py!("dt.datetime(2024, 10, 27, 2, 30, tzinfo=zoneinfo.ZoneInfo('Europe/Paris'), fold=1)")

      assert same?(
               paris,
               "dt.datetime(2024, 10, 27, 2, 30, tzinfo=zoneinfo.ZoneInfo('Europe/Paris'), fold=1)"
             ) == true

      assert {:ok, ^paris} = Snakeport.call(@h, "identity", [paris], instance: @instance)

      # Precision below microseconds is Elixir's only: it comes back as 6.
      assert {:ok, back} =
               Snakeport.call(@h, "identity", [~U[2024-01-02 03:04:05Z]], instance: @instance)

      assert DateTime.compare(back, ~U[2024-01-02 03:04:05Z]) == :eq and
               back.microsecond == {0, 6}
    end

    test "the non-finite float atoms arrive as floats and come back as the atoms" do
      assert describe([:nan, :infinity, :neg_infinity])["repr"] == "[nan, inf, -inf]"
      assert {:ok, true} = Snakeport.call("math", "isinf", [:neg_infinity], instance: @instance)

      assert {:ok, [:nan, :infinity, :neg_infinity]} =
               Snakeport.call(@h, "identity", [[:nan, :infinity, :neg_infinity]],
                 instance: @instance
               )
    end

    test "dates Python cannot hold are bad requests" do
      assert {:error, %Error{reason: :bad_request}} =
               Snakeport.call(@h, "identity", [~D[0000-01-01]], instance: @instance)

      assert {:error, %Error{reason: :bad_request}} =
               Snakeport.call(@h, "identity", [%Decimal{sign: 2, coef: 1, exp: 0}],
                 instance: @instance
               )
    end
  end

  describe "extension points" do
    test "Snakeport.Encoder and Python's registered decoders and encoders" do
      assert {:ok, true} = Snakeport.call(@h, "register", [], instance: @instance)
      point = %Snakeport.Test.Point{x: 1, y: 2}
      assert {:ok, true} = Snakeport.call(@h, "is_point", [point, 1, 2], instance: @instance)
      # Nested anywhere: in a list, a map, a kwarg.
      assert {:ok, true} =
               Snakeport.call(@h, "is_point", [hd([point])],
                 kwargs: [x: 1, y: 2],
                 instance: @instance
               )

      assert {:ok, %Extension{name: "test.Point", payload: %{"x" => 3, "y" => 4}}} =
               Snakeport.call(@h, "point", [3, 4], instance: @instance)

      # A struct without an implementation travels as a map, as before.
      assert %{"type" => "builtins.dict", "repr" => repr} = describe(%Snakeport.Test.Plain{a: 1})
      assert repr =~ "__struct__"

      assert_raise ArgumentError, ~r/returned a Snakeport.Test.Loop again/, fn ->
        Snakeport.call(@h, "identity", [%Snakeport.Test.Loop{n: 1}], instance: @instance)
      end

      assert {:error, %Error{reason: :bad_request, message: message}} =
               Snakeport.call(@h, "identity", [%Extension{name: "nobody", payload: 1}],
                 instance: @instance
               )

      assert message =~ "no decoder is registered for the extension 'nobody'"
    end
  end

  describe "arrays and tools" do
    test "a tool gets Python's large arrays as arrays, and returns arrays Python gets as ndarrays" do
      big = fn %{"n" => n} -> Array.from_list(Enum.map(1..n, &(&1 * 1.0)), {:f, 64}) end
      size = fn %{"data" => %Array{data: data, shape: shape}} -> [byte_size(data), shape] end
      :ok = Snakeport.register_tool(:big, big, instance: @instance)
      :ok = Snakeport.register_tool(:size, size, instance: @instance)

      assert {:ok,
              %{"type" => "ndarray", "dtype" => "<f8", "shape" => [20_000], "tolist" => list}} =
               Snakeport.call(@h, "call_tool", ["big"], kwargs: [n: 20_000], instance: @instance)

      assert hd(list) == 1.0 and List.last(list) == 20_000.0

      # A tuple comes back to Python as a tuple, and the tool's value back to us as data.
      assert {:ok, [160_000, {20_000}]} =
               Snakeport.call(@h, "call_tool_raw", ["size", 20_000], instance: @instance)
    end
  end

  describe "scikit-learn" do
    test "predictions come back as numbers in one call, also from another process of the session" do
      SessionContext.with_session([instance: @instance], fn ->
        {:ok, model} =
          Snakeport.call("sklearn.linear_model", "LinearRegression", [], instance: @instance)

        {:ok, _} = Snakeport.method(model, "fit", [[[0.0], [1.0], [2.0]], [1.0, 3.0, 5.0]])
        session = SessionContext.current(@instance)

        predicted =
          Task.async(fn ->
            SessionContext.with_session(
              [instance: @instance, session_id: session.session_id],
              fn ->
                Snakeport.method(model, "predict", [Array.from_list([[3.0], [4.0]], {:f, 64})])
              end
            )
          end)
          |> Task.await()

        assert {:ok, %Array{type: {:f, 64}, shape: {2}} = y} = predicted
        assert [a, b] = Array.to_list(y)
        assert_in_delta a, 7.0, 1.0e-9
        assert_in_delta b, 9.0, 1.0e-9
        # coef_ and intercept_ (an ndarray and a numpy float64) are data too.
        assert {:ok, %Array{} = coef} = Snakeport.get_attr(model, "coef_")
        assert [c] = Array.to_list(coef)
        assert_in_delta c, 2.0, 1.0e-9
        assert {:ok, i} = Snakeport.get_attr(model, "intercept_")
        assert is_float(i) and abs(i - 1.0) < 1.0e-9
      end)
    end
  end

  describe "preload" do
    @tag snakeport: [preload: ["science_preload_marker", :json]]
    test "imports modules before the worker is ready" do
      assert {:ok, ["science_preload_marker", "json"]} =
               Snakeport.call(@h, "loaded", [["science_preload_marker", "json"]],
                 instance: @instance
               )
    end

    @tag snakeport: false
    test "a module that fails to import fails the start, saying so" do
      capture_log(fn ->
        assert {:error, {%Error{reason: :worker_start_failed, message: message}, _}} =
                 start_supervised(
                   {Snakeport, base_opts() ++ [name: @instance, preload: ["no_such_module_xyz"]]}
                 )

        assert message =~ "a module of :preload (no_such_module_xyz) failed to import"
      end)

      assert_raise ArgumentError, ~r/expected :preload to be a list of Python module names/, fn ->
        Snakeport.start_link(base_opts() ++ [name: @instance, preload: ["not a module"]])
      end
    end
  end
end
