"""autoresearch: an autonomous ML research loop (see README.md)."""

__version__ = "0.1.0"
