"""Import an `avmae` module straight from this checkout when avmae is not installed (the GPU machine has
torch, timm and triton but no avmae, Ray or MLflow). The module's parent packages are created bare, their
`__init__` not run, so e.g. the decoded cache loads without the decoder libraries `avmae.platform.data`
imports."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def import_module(name: str) -> ModuleType:
    """`importlib.import_module(name)`, installed or from the folders pyproject.toml maps `avmae.*` onto."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != "avmae":
            raise
    parts = name.split(".")
    for i in range(1, len(parts)):
        package = types.ModuleType(".".join(parts[:i]))
        package.__path__ = [str(REPO.joinpath(*parts[1:i]))]
        sys.modules[package.__name__] = package
    return importlib.import_module(name)
