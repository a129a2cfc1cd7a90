"""Lazy imports, so that `import retvlp` costs about what `import transformers` does.

Two helpers, both standard-library only (this module imports nothing of retvlp, nor torch or transformers):

- :func:`lazy_package`: a package whose exported names are imported on first use, as transformers'
  `_LazyModule` does (PEP 562 attribute access through a `types.ModuleType` subclass). ``from retvlp import
  MaskedCLIPModel`` imports `retvlp.maskedclip` then, not at ``import retvlp``.
- :func:`call_when_imported`: run a function once, as soon as some modules are imported and no import of a
  watched package is still running. The package root uses it to register the model families with
  transformers' Auto classes the moment transformers' Auto API (or a family) is loaded, instead of loading
  them (and torch) at ``import retvlp``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Iterable, Mapping


# --------------------------------------------------------------------------- lazy packages
class LazyPackage(types.ModuleType):
    """A package module whose names in `_lazy_exports` ({name: absolute module}) and `_lazy_submodules` are
    imported when first read, then kept as ordinary attributes."""

    def __getattr__(self, name: str):
        # Only called when normal lookup fails: the name was never read (or set) before.
        exports = self.__dict__.get("_lazy_exports", {})
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        elif name in self.__dict__.get("_lazy_submodules", ()):
            value = importlib.import_module(f"{self.__name__}.{name}")
        else:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        setattr(self, name, value)
        return value

    def __dir__(self) -> list[str]:
        names = set(self.__dict__) | set(self.__dict__.get("_lazy_exports", {}))
        return sorted(names | set(self.__dict__.get("_lazy_submodules", ())))

    def __setattr__(self, name: str, value) -> None:
        # Importing a submodule binds it as an attribute of its package. Where the package exports a name
        # of its own under the submodule's name (`retvlp.evaluation.finetune` is the function, as it was
        # before the package became lazy), the export wins: it is read from the submodule instead.
        exports = self.__dict__.get("_lazy_exports", {})
        if (
            name in exports
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{self.__name__}.{name}"
            and exports[name] == value.__name__
        ):
            value = getattr(value, name, value)
        super().__setattr__(name, value)


def lazy_package(package_name: str, exports: Mapping[str, str], submodules: Iterable[str] = ()) -> None:
    """Make the (already imported) package `package_name` lazy: each name of `exports` ({name: module, a
    relative module like ".runner" is taken from the package}) is imported from its module when first read,
    and each of `submodules` is imported when read as an attribute. Call it from the package's
    ``__init__``, which then imports nothing heavy itself."""
    package = sys.modules[package_name]
    resolved = {
        name: importlib.util.resolve_name(module, package_name) if module.startswith(".") else module
        for name, module in exports.items()
    }
    package.__dict__["_lazy_exports"] = resolved
    package.__dict__["_lazy_submodules"] = frozenset(submodules)
    package.__class__ = LazyPackage


# --------------------------------------------------------------------------- running code when imported
class _WatchedLoader(importlib.abc.Loader):
    """A module's own loader, run inside the watcher's count of the imports in progress."""

    def __init__(self, loader, watcher: _ImportWatcher):
        self._loader = loader
        self._watcher = watcher

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        # Hand the module its own loader back at once (`__spec__.loader`, `__loader__`): nothing outside this
        # call ever sees the wrapper (inspect, importlib.resources and reload use the real one).
        spec = module.__spec__
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self._loader
        self._watcher.enter()
        try:
            self._loader.exec_module(module)
        except BaseException:
            # A failed import (often an optional one, caught by its importer) runs no callback: the error
            # stays the one the importer sees.
            self._watcher.leave(fire=False)
            raise
        self._watcher.leave()

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _ImportWatcher(importlib.abc.MetaPathFinder):
    """Counts, per thread, the imports of modules of `roots` in progress; when the count returns to 0 and
    `ready()` holds, uninstalls itself and calls `callback` (once).

    Waiting for the count to reach 0 matters: transformers loads its Auto API from inside other modules
    (`modeling_utils` imports it half-way through), and a callback that imports transformers' models then
    would meet a half-initialised module. At count 0 every transformers and retvlp module this thread is
    importing has finished."""

    def __init__(self, roots: Iterable[str], ready: Callable[[], bool], callback: Callable[[], None]):
        self._roots = frozenset(roots)
        self._ready = ready
        self._callback = callback
        self._local = threading.local()
        self._lock = threading.Lock()
        self._done = False

    # The finder itself finds nothing: it asks the finders after it and wraps the loader of what they found.
    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] not in self._roots or self._done:
            return None
        spec = _find_spec_after(self, fullname, path, target)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _WatchedLoader(spec.loader, self)
        return spec

    def enter(self) -> None:
        self._local.depth = getattr(self._local, "depth", 0) + 1

    def leave(self, fire: bool = True) -> None:
        self._local.depth -= 1
        if fire and self._local.depth == 0:
            self.fire_if_ready()

    def fire_if_ready(self) -> None:
        with self._lock:
            if self._done or not self._ready():
                return
            self._done = True
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self._callback()


def _find_spec_after(finder, fullname, path, target):
    """The spec the finders after `finder` in `sys.meta_path` give for `fullname` (None if none does)."""
    finders = sys.meta_path
    start = finders.index(finder) + 1 if finder in finders else 0
    for other in list(finders[start:]):
        find_spec = getattr(other, "find_spec", None)
        if find_spec is None:
            continue
        spec = find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


def call_when_imported(callback: Callable[[], None], *, any_of: Iterable[str], watch: Iterable[str]) -> None:
    """Call `callback` once, as soon as one of the modules `any_of` has been imported and no import of a
    module of the top-level packages `watch` is running in this thread — at once if that already holds.

    The callback runs at the end of the outermost such import, inside it: what it raises, that import raises.
    """
    modules = tuple(any_of)

    def ready() -> bool:
        return any(name in sys.modules for name in modules)

    watcher = _ImportWatcher(watch, ready, callback)
    sys.meta_path.insert(0, watcher)
    watcher.fire_if_ready()


__all__ = ["LazyPackage", "call_when_imported", "lazy_package"]
