"""A fake worker package speaking protocol 99 (harness test: version mismatch found by the diagnosis of a worker that failed to start: it has no __main__)."""
PROTOCOL_VERSION = 99
