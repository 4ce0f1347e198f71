defmodule Snakeport.Defaults do
  @moduledoc false
  # Every default and limit of the harness, in one place. Options (lib/snakeport/options.ex)
  # fall back to these; internal modules read the rest at compile time (`@x Defaults.x()`),
  # so that none is written twice.
  #
  # The worker's own session defaults (`--default-max-refs`, `--default-ttl-seconds`) are
  # not copied here: the harness passes `session_store: [default_max_refs, default_ttl]`
  # to every worker it starts, and a session opened without explicit limits gets them from
  # the worker, whose acknowledgement is what the harness records.

  ## Start options ----------------------------------------------------------------------------

  @doc false
  # ms a call waits for its reply (option :call_timeout).
  def call_timeout, do: 60_000

  @doc false
  # ms to wait for a worker's ready frame (option :startup_timeout).
  def startup_timeout, do: 30_000

  @doc false
  # Workers per instance (option :pool_size).
  def pool_size, do: System.schedulers_online()

  @doc false
  # `max_refs` of a session that does not state one (session_store: [default_max_refs]).
  def max_refs, do: 10_000

  @doc false
  # Seconds a session (and each of its refs) lives unused, when it does not state a TTL
  # (session_store: [default_ttl]).
  def ttl_seconds, do: 3600

  @doc false
  # The overflow policy of a session that does not state one (session_store:
  # [default_overflow]): :error (a result that does not fit fails) or :evict_lru.
  def overflow, do: :error

  @doc false
  # ms an Elixir tool called from Python may run (option :tool_timeout).
  def tool_timeout, do: 30_000

  @doc false
  # Live sessions per instance (session_store: [max_sessions]).
  def max_sessions, do: 10_000

  @doc false
  # ms between two TTL sweeps of the session store (session_store: [cleanup_interval]).
  def cleanup_interval, do: 60_000

  @doc false
  # Loud warnings above `accumulation_threshold/0` of max_sessions (session_store: [strict_mode]).
  def strict_mode, do: false

  @doc false
  # ms one command of `mix snakeport.setup` (creating the virtualenv, one install) may run
  # (config :snakeport, setup_timeout:).
  def setup_timeout, do: 20 * 60_000

  @doc false
  # ms a request may take to end after the harness cancelled it (its caller timed out or
  # died) before its worker is marked stuck (option :cancel_grace).
  def cancel_grace, do: 5_000

  @doc false
  # ms a stuck worker is left to recover before it is killed (SIGKILL) and restarted
  # (option :stuck_timeout; :infinity never kills).
  def stuck_timeout, do: 10_000

  @doc false
  # Longest wait (ms) before restarting a worker that keeps exiting (option
  # :max_restart_backoff): a worker that was up for less than `restart_reset/0` ms waits
  # restart_backoff_base/0 ms before its restart, twice as long after each such quick exit,
  # up to this.
  def max_restart_backoff, do: 5_000

  @doc false
  # ms Snakeport.stats/1 waits for the workers' own stats (its :timeout option).
  def stats_timeout, do: 500

  @doc false
  # ms one probe of an interpreter (`mix snakeport.doctor`, importing the declared deps) may run.
  def probe_timeout, do: 120_000

  @doc false
  # Items a stream asks for per batch (Snakeport.stream/4 option :batch_size).
  def stream_batch_size, do: 10_000

  @doc false
  # Estimated bytes at which the worker ends a stream's batch early (option :batch_bytes).
  def stream_batch_bytes, do: 1_048_576

  @doc false
  # The least level of Python's output forwarded to Logger (option :python_log_level).
  def python_log_level, do: :info

  ## Internal limits ---------------------------------------------------------------------------

  @doc false
  # The largest request a worker accepts when its ready frame does not say (the worker's own
  # default for --max-frame-bytes: 256 MiB).
  def max_frame_bytes, do: 256 * 1024 * 1024

  @doc false
  # ms the session store may take to answer a request that is not part of a call (release,
  # describe, counts): calls bound the store's answer by their own timeout instead.
  def store_timeout, do: 60_000

  @doc false
  # A caller refreshes its session's last_access at most this often (ms): hot calls stay
  # write-free.
  def touch_granularity, do: 100

  @doc false
  # Percent of max_sessions above which the store emits accumulation warnings.
  def accumulation_threshold, do: 80

  @doc false
  # ms an orderly stop waits for the Python process to exit after `shutdown`.
  def shutdown_wait, do: 2_000

  @doc false
  # ms a worker's supervisor waits for the worker to stop.
  def worker_shutdown, do: 5_000

  @doc false
  # ms the instance's start waits beyond :startup_timeout for every worker to report.
  def startup_margin, do: 5_000

  @doc false
  # The least ms a worker that failed before its ready frame gives its diagnosis of the
  # interpreter (`python -c "import snakeport"`, Snakeport.Options.diagnose/2), however
  # little of :startup_timeout is left: less than startup_margin/0, so that the diagnosis
  # reaches the instance's start.
  def diagnose_timeout, do: 2_000

  @doc false
  # ms between two liveness checks of a worker: callers that died with requests in flight
  # (their requests are cancelled), cancels not yet written, cancelled requests overdue.
  def liveness_interval, do: 100

  @doc false
  # ms a worker waits for its Python process to exit after killing it (SIGKILL).
  def kill_wait, do: 1_000

  @doc false
  # The first backoff (ms) of a worker restarted after a quick exit (capped by
  # :max_restart_backoff).
  def restart_backoff_base, do: 100

  @doc false
  # A worker that was up for this long (ms) before it exited is restarted at once, and its
  # backoff starts over.
  def restart_reset, do: 10_000

  @doc false
  # The default placement of an instance's new sessions (start option :placement): a
  # worker of this node first, another node's when this one has none available.
  def placement, do: :local

  @doc false
  # ms between two load reports of a node to the other nodes of its instance's cluster
  # (Snakeport.Cluster); a node that joins gets one at once.
  def cluster_interval, do: 1_000

  @doc false
  # ms a cluster-wide question waits for the other nodes at most (where a session id
  # lives, their stats): a node that does not answer in time is left out.
  def cluster_timeout, do: 5_000

  @doc false
  # ms between two looks of a courier at the callers of other nodes it watches: those with
  # no request in flight any more stop being monitored.
  def remote_caller_prune, do: 10_000
end
