"""Backends that run exported artifacts. Heavy libraries are imported only when a runner is made."""

from edgeprune.backends.base import Runner

__all__ = ["Runner"]
