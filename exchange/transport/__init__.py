"""Outbound HTTP for pings and posts."""

from exchange.transport.client import Failure, Reply, Transport, TransportError

__all__ = ["Failure", "Reply", "Transport", "TransportError"]
