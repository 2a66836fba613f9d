"""Imported once by the `ss` fork server, so each CrypTen worker starts in milliseconds, not seconds.

The fork server is a single-threaded process that imports torch and CrypTen (through the torch 2.x
compatibility shim) and then forks one child per worker; forking it is safe, unlike forking a threaded
privinfer server.
"""
import torch  # noqa: F401

from ..._compat.crypten_import import load_crypten

load_crypten()
import crypten.mpc.provider.ttp_provider  # noqa: E402,F401
import omegaconf  # noqa: E402,F401

from . import crypten_setup, lowering, tuples, worker  # noqa: E402,F401
