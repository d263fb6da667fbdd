"""A self-hosted ping-post lead exchange."""

__version__ = "0.1.0"
