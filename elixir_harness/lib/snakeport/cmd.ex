defmodule Snakeport.Cmd do
  @moduledoc false
  # Runs an OS command (an installer, a probe of an interpreter) with a deadline: like
  # System.cmd/3, but the process is killed when `:timeout` ms pass, and its output
  # (stdout and stderr) can be shown line by line as it comes (`:into`, a function of each
  # line, with its "\n") while its tail is kept for the caller's error message. Lines are
  # valid UTF-8 (bytes that are not are read as Latin-1), so that they can be printed.

  @tail_bytes 64 * 1024
  # Longer lines come in pieces.
  @line_bytes 16 * 1024

  @type result :: {:ok, non_neg_integer(), String.t()} | {:error, String.t()}

  @doc false
  # Options: `:timeout` (ms, required), `:env` ([{name, value | nil}], nil unsets), `:cd`,
  # `:into` (fun(String.t()) called with each line of output). Returns {:ok, exit_status,
  # output} (the output's last 64 KiB) or {:error, message} when the program is not found,
  # cannot start or runs past the deadline (it is then killed).
  @spec run(String.t(), [String.t()], keyword()) :: result()
  def run(program, args, opts) do
    timeout = Keyword.fetch!(opts, :timeout)

    with {:ok, exe} <- executable(program),
         {:ok, port} <- open(exe, args, opts) do
      # The port's :DOWN ends the output: in line mode the last line, when it has no
      # newline, comes after the exit status.
      mref = Port.monitor(port)

      state = %{
        port: port,
        mref: mref,
        into: opts[:into],
        acc: [],
        size: 0,
        status: nil,
        deadline: System.monotonic_time(:millisecond) + timeout,
        what: "#{program} #{Enum.join(args, " ")}",
        timeout: timeout
      }

      collect(state)
    end
  end

  defp executable(program) do
    found =
      if String.contains?(program, "/") do
        path = Path.expand(program)
        if File.regular?(path), do: path
      else
        System.find_executable(program)
      end

    if found, do: {:ok, found}, else: {:error, "#{program}: no such program"}
  end

  defp open(exe, args, opts) do
    env =
      for {k, v} <- Keyword.get(opts, :env, []),
          do: {String.to_charlist(k), if(v, do: String.to_charlist(v), else: false)}

    port_opts =
      [:binary, :exit_status, :stderr_to_stdout, :hide, line: @line_bytes, args: args, env: env] ++
        if(opts[:cd], do: [cd: opts[:cd]], else: [])

    {:ok, Port.open({:spawn_executable, exe}, port_opts)}
  rescue
    e in ErlangError -> {:error, "cannot run #{exe}: #{inspect(e.original)}"}
  end

  defp collect(%{port: port, mref: mref} = state) do
    remaining = max(state.deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, {eol, data}}} ->
        data = if eol == :eol, do: printable(data) <> "\n", else: printable(data)
        if state.into, do: state.into.(data)
        {acc, size} = keep_tail([data | state.acc], state.size + byte_size(data))
        collect(%{state | acc: acc, size: size})

      {^port, {:exit_status, status}} ->
        collect(%{state | status: status})

      {:DOWN, ^mref, :port, ^port, _reason} ->
        output = state.acc |> Enum.reverse() |> IO.iodata_to_binary()

        case state.status do
          nil -> {:error, "`#{state.what}` closed its output without an exit status"}
          status -> {:ok, status, output}
        end
    after
      remaining ->
        Port.demonitor(mref, [:flush])
        kill(port)
        {:error, "`#{state.what}` did not finish within #{state.timeout} ms and was killed"}
    end
  end

  defp printable(data) do
    if String.valid?(data), do: data, else: :unicode.characters_to_binary(data, :latin1)
  end

  defp keep_tail(acc, size) when size <= 2 * @tail_bytes, do: {acc, size}

  defp keep_tail(acc, _size) do
    tail = acc |> Enum.reverse() |> IO.iodata_to_binary() |> binary_part_tail(@tail_bytes)
    {[tail], byte_size(tail)}
  end

  defp binary_part_tail(bin, n) when byte_size(bin) <= n, do: bin
  defp binary_part_tail(bin, n), do: binary_part(bin, byte_size(bin) - n, n)

  defp kill(port) do
    case Port.info(port, :os_pid) do
      {:os_pid, pid} -> System.cmd("kill", ["-KILL", Integer.to_string(pid)])
      nil -> :ok
    end

    Port.close(port)
    flush(port)
  rescue
    ArgumentError -> flush(port)
  end

  defp flush(port) do
    receive do
      {^port, _} -> flush(port)
    after
      0 -> :ok
    end
  end
end
