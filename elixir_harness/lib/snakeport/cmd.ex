defmodule Snakeport.Cmd do
  @moduledoc false
  # Runs an OS command (an installer, a probe of an interpreter) with a deadline: like
  # System.cmd/3, but the process is killed when `:timeout` ms pass, and its output
  # (stdout and stderr) can be shown as it comes (`:into`, a function of each chunk) while
  # its tail is kept for the caller's error message.

  @tail_bytes 64 * 1024

  @type result :: {:ok, non_neg_integer(), String.t()} | {:error, String.t()}

  @doc false
  # Options: `:timeout` (ms, required), `:env` ([{name, value | nil}], nil unsets), `:cd`,
  # `:into` (fun(binary) called with each chunk of output). Returns {:ok, exit_status,
  # output} (the output's last 64 KiB) or {:error, message} when the program is not found,
  # cannot start or runs past the deadline (it is then killed).
  @spec run(String.t(), [String.t()], keyword()) :: result()
  def run(program, args, opts) do
    timeout = Keyword.fetch!(opts, :timeout)

    with {:ok, exe} <- executable(program),
         {:ok, port} <- open(exe, args, opts) do
      deadline = System.monotonic_time(:millisecond) + timeout
      collect(port, opts[:into], [], 0, deadline, "#{program} #{Enum.join(args, " ")}", timeout)
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
      [:binary, :exit_status, :stderr_to_stdout, :hide, args: args, env: env] ++
        if(opts[:cd], do: [cd: opts[:cd]], else: [])

    {:ok, Port.open({:spawn_executable, exe}, port_opts)}
  rescue
    e in ErlangError -> {:error, "cannot run #{exe}: #{inspect(e.original)}"}
  end

  defp collect(port, into, acc, size, deadline, what, timeout) do
    remaining = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, data}} ->
        if into, do: into.(data)
        {acc, size} = keep_tail([data | acc], size + byte_size(data))
        collect(port, into, acc, size, deadline, what, timeout)

      {^port, {:exit_status, status}} ->
        {:ok, status, acc |> Enum.reverse() |> IO.iodata_to_binary()}
    after
      remaining ->
        kill(port)
        {:error, "`#{what}` did not finish within #{timeout} ms and was killed"}
    end
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
