"""A fake worker package that never sends its ready frame (harness test: startup timeout)."""
PROTOCOL_VERSION = 1
