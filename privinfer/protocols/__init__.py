"""Protocols, one module each, found by name through the registry in `base`."""
from .base import ClientSide, Protocol, ServerSide, available_protocols, get_protocol, register

__all__ = ["ClientSide", "Protocol", "ServerSide", "available_protocols", "get_protocol", "register"]
