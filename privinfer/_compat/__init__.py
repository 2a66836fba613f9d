"""Shims for third-party breakage, each tiny and tested."""
