"""Methods: each module reads like its paper's algorithm and names the stages it is made of."""
from __future__ import annotations

from types import ModuleType

from ..errors import NasflowError
from . import darts

METHODS: dict[str, ModuleType] = {"darts": darts}


def get_method(name: str) -> ModuleType:
    if name not in METHODS:
        raise NasflowError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]
