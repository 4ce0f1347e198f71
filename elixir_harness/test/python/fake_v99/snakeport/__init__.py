"""A fake worker package speaking protocol 99 (harness test: version mismatch at preflight)."""
PROTOCOL_VERSION = 99
