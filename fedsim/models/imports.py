"""User models by import path ``"package.module:Name"``, checked before anything runs.

Importing a module runs its code, so a path is first checked statically: the
module must be found by the import system without importing it (nor its parent
packages), and its Python source must bind ``Name`` at the top level (a class,
a function, an assignment or an import; ``from x import *`` is followed into
``x``). Only then is the module imported. A path that fails the check, such as
``"this:Foo"``, is refused with one line and the module never runs.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path

from torch import nn

from fedsim.models.errors import one_line

MAX_STAR_DEPTH = 8
"""How many ``from x import *`` levels the static check follows."""


def split_import_path(path: str) -> tuple[str, str]:
    """``"pkg.module:Name"`` → ``("pkg.module", "Name")``.

    Raises:
        ValueError: the path is not dotted identifiers, a colon and an identifier.
    """
    module_name, _, attr = path.partition(":")
    parts = module_name.split(".")
    if not attr.isidentifier() or not all(part.isidentifier() for part in parts):
        raise ValueError(f"model import path must look like 'pkg.module:Class', got {path!r}")
    return module_name, attr


def find_spec_without_importing(module_name: str) -> ModuleSpec | None:
    """The spec the import system would use for ``module_name``, found without
    executing any module (``importlib.util.find_spec`` imports the parent packages);
    ``None`` if there is no such module."""
    if module_name in sys.modules:
        return getattr(sys.modules[module_name], "__spec__", None)
    parent, _, _ = module_name.rpartition(".")
    search = None
    if parent:
        parent_spec = find_spec_without_importing(parent)
        if parent_spec is None or parent_spec.submodule_search_locations is None:
            return None
        search = list(parent_spec.submodule_search_locations)
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        spec = find_spec(module_name, search) if find_spec is not None else None
        if spec is not None:
            return spec
    return None


def _source(spec: ModuleSpec) -> str | None:
    """The module's Python source, read from its file (``None``: no ``.py`` file)."""
    origin = spec.origin
    if not (spec.has_location and origin and origin.endswith(".py")):
        return None
    try:
        return importlib.util.decode_source(Path(origin).read_bytes())
    except (OSError, UnicodeDecodeError):  # e.g. a module inside a zip archive
        return None


def _top_level(statements: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The module-level statements, including those inside ``if``/``try``/``with`` blocks."""
    for node in statements:
        yield node
        if isinstance(node, ast.If | ast.With):
            yield from _top_level(node.body)
            yield from _top_level(getattr(node, "orelse", []))
        elif isinstance(node, ast.Try):
            yield from _top_level(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                yield from _top_level(handler.body)


def _bound_names(node: ast.stmt) -> Iterator[str]:
    """Names a module-level statement binds."""
    if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        yield node.name
    elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    yield name.id
    elif isinstance(node, ast.Import | ast.ImportFrom):
        for alias in node.names:
            if alias.name != "*":
                yield alias.asname or alias.name.partition(".")[0]


def _star_sources(node: ast.stmt, package: str) -> Iterator[str]:
    """The module a ``from x import *`` statement reads (resolved against ``package``)."""
    if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
        try:
            yield importlib.util.resolve_name("." * node.level + (node.module or ""), package)
        except ImportError:
            return


def defines_statically(module_name: str, attr: str, depth: int = 0) -> bool:
    """Whether ``module_name``'s source binds ``attr`` at its top level (without running it)."""
    spec = find_spec_without_importing(module_name)
    source = None if spec is None else _source(spec)
    if spec is None or source is None or depth > MAX_STAR_DEPTH:
        return False
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return False
    package = module_name if spec.submodule_search_locations is not None else spec.parent or ""
    statements = list(_top_level(tree.body))
    if any(attr in _bound_names(node) for node in statements):
        return True
    return any(
        defines_statically(star, attr, depth + 1)
        for node in statements
        for star in _star_sources(node, package)
    )


@functools.cache
def import_model_class(path: str) -> type[nn.Module]:
    """Resolve ``"package.module:ClassName"`` to a ``nn.Module`` subclass, importing the
    module only after the static check of the module docstring. Resolved once per
    process (every client builds its model every round); failures are not cached.

    Raises:
        ValueError: a malformed path, a module that cannot be found or imported, or a
            name that is not an ``nn.Module`` subclass (one line).
    """
    module_name, attr = split_import_path(path)
    if find_spec_without_importing(module_name) is None:
        raise ValueError(f"cannot import module {module_name!r} for model {path!r}: not found")
    if not defines_statically(module_name, attr):
        raise ValueError(
            f"{path!r} is not a torch.nn.Module subclass: the source of module "
            f"{module_name!r} defines no {attr!r} at its top level (checked without importing it)"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module failed on import: one line, not a traceback
        raise ValueError(
            f"cannot import module {module_name!r} for model {path!r}: {one_line(exc)}"
        ) from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{path!r} is not a torch.nn.Module subclass")
    return cls
