"""Package attributes loaded on first use, so that importing a package (the command line does,
for its help) does not import torch until something that needs it is touched."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_attributes(package: str, namespace: dict, attributes: dict[str, str | None]
                    ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: attribute ``name`` is ``name`` of its
    submodule ``attributes[name]``, or the submodule ``name`` itself when that is None. Once
    loaded, an attribute is stored in the package's ``namespace`` and found without this."""
    def __getattr__(name: str):
        if name not in attributes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f".{attributes[name] or name}", package)
        value = module if attributes[name] is None else getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(attributes))

    return __getattr__, __dir__
