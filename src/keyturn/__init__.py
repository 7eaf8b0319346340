"""Keyturn: a just-in-time privileged access broker."""

__version__ = "0.1.0"
