"""mailout: compose, preview, test and dispatch an email newsletter."""

__version__ = "0.1.0.dev0"
