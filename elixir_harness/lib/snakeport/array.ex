defmodule Snakeport.Array do
  @moduledoc """
  A numpy array as data: its element type, its shape and its bytes.

  A `numpy.ndarray` of a numeric or bool dtype comes back from Python as a
  `%Snakeport.Array{}` (under the default `result: :auto` too: numpy is data), and a
  `%Snakeport.Array{}` passed to Python arrives as an `ndarray`. Fields:

    * `:type` - the element type in Nx's notation: `{:s, 8 | 16 | 32 | 64}` (signed
      integers), `{:u, 8 | 16 | 32 | 64}` (unsigned), `{:f, 16 | 32 | 64}` (floats),
      `{:c, 64 | 128}` (complex: real and imaginary parts of half the size each).
    * `:shape` - a tuple of dimensions (`{}` for a 0-d array, `{0}` for an empty one).
    * `:data` - the elements in C (row-major) order and the machine's native byte order,
      as one binary.
    * `:dtype` - `nil`, or numpy's `dtype.str` when `:type` alone would not give the dtype
      back: `"|b1"` (bool, whose `:type` is `{:u, 8}`), a non-native byte order such as
      `">f8"` (the data is still native: it was converted), `"<M8[ns]"` / `"<m8[s]"`
      (`datetime64` / `timedelta64`, whose `:type` is `{:s, 64}`: counts of that unit;
      `NaT` is the smallest integer). Python gets that exact dtype back.

  ## Nx

  The fields are Nx's own, so this is the whole interop (Nx is not a dependency of
  Snakeport):

      tensor = Nx.from_binary(array.data, array.type) |> Nx.reshape(array.shape)

      array = %Snakeport.Array{
        type: Nx.type(tensor),
        shape: Nx.shape(tensor),
        data: Nx.to_binary(tensor)
      }

  (`{:bf, 16}` has no numpy dtype: the worker refuses it with `:bad_request`.)

  ## Copies

  A large array (64 KiB of data or more) leaves Python without being copied into an
  intermediate buffer, and `:data` is then a sub-binary of the reply frame: no copy on
  either side beyond the pipe. The array Python receives is built on the bytes it received,
  without a copy, and is **read-only** (`flags.writeable` is False); call `arr.copy()` in
  Python for a writable one.

  ## Examples

      iex> array = Snakeport.Array.from_list([[1, 2, 3], [4, 5, 6]], {:s, 32})
      iex> {array.type, array.shape, byte_size(array.data)}
      {{:s, 32}, {2, 3}, 24}
      iex> Snakeport.Array.to_list(array)
      [[1, 2, 3], [4, 5, 6]]

      iex> Snakeport.Array.from_list([true, false], :bool)
      #Snakeport.Array<{:u, 8} {2} dtype: "|b1" [true, false]>

      iex> Snakeport.Array.from_list([1.5, :nan, :infinity], {:f, 32}) |> Snakeport.Array.to_list()
      [1.5, :nan, :infinity]

      iex> Snakeport.Array.new(<<1, 2, 3, 4>>, {:u, 8}, {2, 2}) |> Snakeport.Array.to_list()
      [[1, 2], [3, 4]]
  """

  import Bitwise

  @enforce_keys [:type, :shape, :data]
  defstruct [:type, :shape, :data, dtype: nil]

  @typedoc "An element type in Nx's notation."
  @type type ::
          {:s, 8 | 16 | 32 | 64}
          | {:u, 8 | 16 | 32 | 64}
          | {:f, 16 | 32 | 64}
          | {:c, 64 | 128}
          | {:bf, 16}

  @type t :: %__MODULE__{
          type: type(),
          shape: tuple(),
          data: binary(),
          dtype: String.t() | nil
        }

  @typedoc "An element: a number, `:nan`/`:infinity`/`:neg_infinity`, `{re, im}`, a boolean."
  @type element :: number() | :nan | :infinity | :neg_infinity | {number(), number()} | boolean()

  @doc """
  Builds an array from its binary, element type and shape.

  Raises `ArgumentError` when the type is not one of Nx's or the binary's size is not the
  element count of `shape` times the element size.

  ## Examples

      iex> Snakeport.Array.new(<<0::float-64-native, 1::float-64-native>>, {:f, 64}, {2})
      ...> |> Snakeport.Array.to_list()
      [0.0, 1.0]
  """
  @spec new(binary(), type(), tuple(), String.t() | nil) :: t()
  def new(data, type, shape, dtype \\ nil) do
    array = %__MODULE__{type: type, shape: shape, data: data, dtype: dtype}

    case check(array) do
      :ok -> array
      {:error, message} -> raise ArgumentError, message
    end
  end

  @doc false
  # Checks the fields: :ok or {:error, message}.
  @spec check(term()) :: :ok | {:error, String.t()}
  def check(%__MODULE__{type: type, shape: shape, data: data, dtype: dtype}) do
    cond do
      not valid_type?(type) ->
        {:error,
         "expected the array's :type to be an Nx type such as {:f, 64}, got: #{inspect(type)}"}

      not (is_tuple(shape) and Enum.all?(Tuple.to_list(shape), &(is_integer(&1) and &1 >= 0))) ->
        {:error,
         "expected the array's :shape to be a tuple of non-negative integers, got: #{inspect(shape)}"}

      not is_binary(data) ->
        {:error, "expected the array's :data to be a binary, got: #{inspect(data, limit: 5)}"}

      byte_size(data) != count(shape) * div(elem(type, 1), 8) ->
        {:error,
         "the array's :data has #{byte_size(data)} bytes; shape #{inspect(shape)} of " <>
           "#{inspect(type)} needs #{count(shape) * div(elem(type, 1), 8)}"}

      not (is_nil(dtype) or is_binary(dtype)) ->
        {:error, "expected the array's :dtype to be nil or a string, got: #{inspect(dtype)}"}

      true ->
        :ok
    end
  end

  def check(other), do: {:error, "expected a %Snakeport.Array{}, got: #{inspect(other)}"}

  @doc false
  def valid_type?({kind, bits}) when kind in [:s, :u], do: bits in [8, 16, 32, 64]
  def valid_type?({:f, bits}), do: bits in [16, 32, 64]
  def valid_type?({:c, bits}), do: bits in [64, 128]
  def valid_type?({:bf, 16}), do: true
  def valid_type?(_), do: false

  defp count(shape), do: shape |> Tuple.to_list() |> Enum.reduce(1, &(&1 * &2))

  @doc """
  Builds an array from nested lists of numbers (all lists of one level as long as each
  other), or from a single number for a 0-d array.

  `type` is an Nx type, or `:bool` for a numpy bool array (elements `true`/`false`).
  Float elements may be integers and `:nan`, `:infinity`, `:neg_infinity`; complex ones
  `{re, im}` or a number.

  Raises `ArgumentError` for ragged lists or elements that do not fit the type.

  ## Examples

      iex> Snakeport.Array.from_list([[1.0, 2.0]], {:f, 64}).shape
      {1, 2}

      iex> Snakeport.Array.from_list(7, {:s, 64}).shape
      {}

      iex> Snakeport.Array.from_list([], {:u, 8}).shape
      {0}
  """
  @spec from_list(element() | list(), type() | :bool) :: t()
  def from_list(list, :bool) do
    array = from_list(bool_to_int(list), {:u, 8})
    %{array | dtype: "|b1"}
  end

  def from_list(list, type) do
    unless valid_type?(type) and type != {:bf, 16} do
      raise ArgumentError, "expected an Nx type such as {:f, 64} or :bool, got: #{inspect(type)}"
    end

    shape = list |> shape_of() |> List.to_tuple()
    data = list |> flatten(length(Tuple.to_list(shape)), []) |> Enum.map(&pack(&1, type))
    %__MODULE__{type: type, shape: shape, data: IO.iodata_to_binary(data)}
  end

  defp bool_to_int(list) when is_list(list), do: Enum.map(list, &bool_to_int/1)
  defp bool_to_int(true), do: 1
  defp bool_to_int(false), do: 0

  defp bool_to_int(other),
    do: raise(ArgumentError, "expected booleans for a :bool array, got: #{inspect(other)}")

  defp shape_of([]), do: [0]

  defp shape_of([first | _] = list) when is_list(first) do
    inner = shape_of(first)

    Enum.each(list, fn item ->
      unless is_list(item) and shape_of(item) == inner do
        raise ArgumentError,
              "expected nested lists of equal lengths, got: #{inspect(list, limit: 10)}"
      end
    end)

    [length(list) | inner]
  end

  defp shape_of(list) when is_list(list) do
    if Enum.any?(list, &is_list/1) do
      raise ArgumentError,
            "expected nested lists of equal lengths, got: #{inspect(list, limit: 10)}"
    end

    [length(list)]
  end

  defp shape_of(_scalar), do: []

  defp flatten(scalar, 0, _acc), do: [scalar]
  defp flatten(list, 1, _acc), do: list
  defp flatten(list, depth, _acc), do: Enum.flat_map(list, &flatten(&1, depth - 1, []))

  defp pack(n, {:s, bits})
       when is_integer(n) and n >= -(1 <<< (bits - 1)) and n < 1 <<< (bits - 1),
       do: <<n::signed-size(bits)-native>>

  defp pack(n, {:u, bits}) when is_integer(n) and n >= 0 and n < 1 <<< bits,
    do: <<n::unsigned-size(bits)-native>>

  defp pack(x, {:f, bits}) when is_number(x), do: <<x * 1.0::float-size(bits)-native>>
  defp pack(x, {:f, bits}) when x in [:nan, :infinity, :neg_infinity], do: special(x, bits)

  defp pack({re, im}, {:c, bits}),
    do: [pack(re, {:f, div(bits, 2)}), pack(im, {:f, div(bits, 2)})]

  defp pack(x, {:c, bits}) when is_number(x), do: pack({x, 0}, {:c, bits})

  defp pack(x, type),
    do: raise(ArgumentError, "#{inspect(x)} does not fit an array of type #{inspect(type)}")

  @specials %{
    16 => %{nan: 0x7E00, infinity: 0x7C00, neg_infinity: 0xFC00},
    32 => %{nan: 0x7FC00000, infinity: 0x7F800000, neg_infinity: 0xFF800000},
    64 => %{
      nan: 0x7FF8000000000000,
      infinity: 0x7FF0000000000000,
      neg_infinity: 0xFFF0000000000000
    }
  }

  defp special(x, bits), do: <<@specials[bits][x]::size(bits)-native>>

  @doc """
  The elements as nested lists (the element itself for a 0-d array).

  Integers for `{:s, _}`/`{:u, _}` (also for `datetime64`/`timedelta64` counts), floats for
  `{:f, _}` (NaN and infinities as `:nan`, `:infinity`, `:neg_infinity`, as Nx does),
  `{re, im}` for `{:c, _}`, booleans when `:dtype` is `"|b1"`.

  ## Examples

      iex> Snakeport.Array.from_list([[1, 2], [3, 4]], {:u, 16}) |> Snakeport.Array.to_list()
      [[1, 2], [3, 4]]

      iex> Snakeport.Array.from_list([{1.0, -1.0}], {:c, 64}) |> Snakeport.Array.to_list()
      [{1.0, -1.0}]
  """
  @spec to_list(t()) :: element() | list()
  def to_list(%__MODULE__{type: type, shape: shape, data: data, dtype: dtype} = array) do
    case check(array) do
      :ok -> :ok
      {:error, message} -> raise ArgumentError, message
    end

    if type == {:bf, 16} do
      raise ArgumentError, "to_list/1 does not read {:bf, 16} arrays (use Nx)"
    end

    bool? = dtype in ["|b1", "?", "bool"]
    elements = unpack(data, type, bool?, [])

    case Tuple.to_list(shape) do
      [] -> hd(elements)
      dims -> nest(elements, dims)
    end
  end

  defp unpack(<<>>, _type, _bool?, acc), do: Enum.reverse(acc)

  defp unpack(data, {:s, bits} = type, bool?, acc) do
    <<n::signed-size(bits)-native, rest::binary>> = data
    unpack(rest, type, bool?, [n | acc])
  end

  defp unpack(data, {:u, bits} = type, bool?, acc) do
    <<n::unsigned-size(bits)-native, rest::binary>> = data
    unpack(rest, type, bool?, [if(bool?, do: n != 0, else: n) | acc])
  end

  defp unpack(data, {:f, bits} = type, bool?, acc) do
    <<x::binary-size(div(bits, 8)), rest::binary>> = data
    unpack(rest, type, bool?, [float(x, bits) | acc])
  end

  defp unpack(data, {:c, bits} = type, bool?, acc) do
    half = div(bits, 2)
    <<re::binary-size(div(half, 8)), im::binary-size(div(half, 8)), rest::binary>> = data
    unpack(rest, type, bool?, [{float(re, half), float(im, half)} | acc])
  end

  defp float(bytes, bits) do
    case bytes do
      <<x::float-size(bits)-native>> ->
        x

      <<n::size(bits)-native>> ->
        %{infinity: inf, neg_infinity: neg} = @specials[bits]

        cond do
          n == inf -> :infinity
          n == neg -> :neg_infinity
          true -> :nan
        end
    end
  end

  @doc false
  # The first `n` elements, flat (for Inspect).
  def head(%__MODULE__{type: type, data: data, dtype: dtype}, n) do
    size = div(elem(type, 1), 8)
    take = min(n * size, byte_size(data))
    unpack(binary_part(data, 0, take), type, dtype in ["|b1", "?", "bool"], [])
  end

  defimpl Inspect do
    import Inspect.Algebra

    # Nested values for small arrays, the first elements of large ones; never the bytes.
    def inspect(%{type: type, shape: shape, dtype: dtype} = array, opts) do
      count = shape |> Tuple.to_list() |> Enum.reduce(1, &(&1 * &2))

      values =
        cond do
          Snakeport.Array.check(array) != :ok or type == {:bf, 16} ->
            "(#{byte_size(array.data)} bytes)"

          count <= 100 ->
            to_doc(Snakeport.Array.to_list(array), opts)

          true ->
            shown = Snakeport.Array.head(array, 10) |> Enum.map(&to_doc(&1, opts))
            concat(["[" | Enum.intersperse(shown, ", ")] ++ [", ... (#{count} elements)]"])
        end

      concat([
        "#Snakeport.Array<",
        to_doc(type, opts),
        " ",
        to_doc(shape, opts),
        if(dtype, do: " dtype: " <> Kernel.inspect(dtype), else: ""),
        " ",
        values,
        ">"
      ])
    end
  end

  defp nest(elements, [_n]), do: elements

  defp nest(elements, [n | rest]) do
    size = Enum.reduce(rest, 1, &(&1 * &2))

    if size == 0 do
      List.duplicate(nest([], rest), n)
    else
      elements |> Enum.chunk_every(size) |> Enum.map(&nest(&1, rest))
    end
  end
end
