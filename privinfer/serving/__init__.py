"""Serving at scale: many worker processes behind one port (`workers`), and the load test's helpers.

The single-process server (`privinfer.server`) stays the unit of work: each worker runs one, and the
supervisor here only accepts, counts and hands connections over.
"""
from .workers import Supervisor, serve_workers

__all__ = ["Supervisor", "serve_workers"]
