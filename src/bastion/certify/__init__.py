"""Certifiers; every one returns a ``Certificate``."""

from bastion.certify.records import Certificate

__all__ = ["Certificate"]
