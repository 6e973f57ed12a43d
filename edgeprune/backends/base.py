"""The runner interface every backend implements (ONNX Runtime now, TensorRT later).

As in Polygraphy, a backend is a *loader* (a cheap callable that builds the heavy object on demand)
and a *runner* that owns it between ``activate()`` and ``deactivate()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Runner(ABC):
    name: str = "runner"

    def __init__(self) -> None:
        self.active = False

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def deactivate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def input_metadata(self) -> dict[str, tuple[list[Any], str]]:
        """Input name -> (shape, dtype) as the engine sees it."""

    def activate(self) -> "Runner":
        if not self.active:
            self.activate_impl()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self.deactivate_impl()
            self.active = False

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.active:
            raise RuntimeError(f"{self.name} must be activated before infer()")
        return self.infer_impl(feed)

    def run_raw(self, feed: dict[str, np.ndarray]) -> None:
        """Run without keeping the outputs (timing loops); backends override it with a cheaper path."""
        self.infer(feed)

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()
