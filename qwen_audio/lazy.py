"""Package attributes imported on first use (PEP 562).

Importing a light submodule thus does not load the heavy libraries a sibling needs (Lightning, the
scorers' packages). ``from package import name`` works as it does with eager imports.

PEP 562 has one caveat. A function named like its submodule (``metrics.error_rate``) is shadowed by
the submodule in one case. That is when the submodule is imported by its own path
(``import qwen_audio.eval.metrics.error_rate``) before the name is first read. Import such functions
from the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, modules: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build the ``__getattr__`` and ``__dir__`` of ``package``.

    Each public ``name`` of ``package`` lives in module ``modules[name]``.
    """

    def __getattr__(name: str) -> Any:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(modules[name]), name)
        # Kept in the package: importing a submodule binds its name there, which would shadow a
        # function of the same name (``metrics.error_rate``) on the next look-up.
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(modules) | set(vars(importlib.import_module(package))))

    return __getattr__, __dir__
