"""Imported by the :preload test: its presence in sys.modules says the preload ran."""
