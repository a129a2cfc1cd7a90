"""Data-root containment: image paths of a manifest must stay inside the folders the data lives in.

A manifest is data, and data can come from anyone: a row naming `../../etc/passwd`, an absolute path or a
symlink that leads out of the data folder would otherwise be opened, decoded and trained on (and the start of
that file would end up in error messages). Every file manifest is therefore read with a `DataRoots`: each image
path is resolved with `os.path.realpath` (symlinks and `..` followed) and a path that resolves outside every
allowed root becomes an `outside-data-root` problem instead of a record, so nothing downstream (validation, the
image cache, evaluation) ever opens it.

The allowed roots of a manifest are its own folder, its `image_root` (when given) and any extra folders the
user lists (`data.allowed_roots`, `--allowed-root`). `allow_outside` switches the check off for users whose
manifests legitimately point elsewhere. Images embedded in a Hugging Face dataset (`HFImageRef`) are not files
and are not checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from .problems import DataProblem, make_problem

# What the user can do about an outside path; named in every `outside-data-root` message.
OPT_OUT_HINT = (
    "add its folder to data.allowed_roots (--allowed-root DIR of retvlp validate-data / evaluate and "
    "training/pretrain.py) or, if the manifest is meant to point anywhere, set data.allow_outside_data_roots: true "
    "(--allow-outside-data-roots)"
)


def _real(path: str | os.PathLike) -> str:
    """The canonical absolute form of `path`: symlinks and `..` resolved, case-folded where the OS is."""
    return os.path.normcase(os.path.realpath(os.path.expanduser(os.fspath(path))))


def root_list(roots: str | os.PathLike | Iterable[str | os.PathLike] | None) -> list[str]:
    """`roots` as a list of path strings: one path (a YAML scalar written instead of a list) or several."""
    if roots is None:
        return []
    if isinstance(roots, (str, os.PathLike)):
        return [os.fspath(roots)]
    return [os.fspath(root) for root in roots]


def is_within(path: str, root: str) -> bool:
    """Whether the real path `path` is `root` or lies below it (both already canonical, see `_real`)."""
    if path == root:
        return True
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path.startswith(prefix)


@dataclass
class DataRoots:
    """The folders image files may live in, and the check of one path against them.

    Args:
        roots: allowed folders (resolved with `os.path.realpath` here, so a root reached through a symlink
            allows what it points to).
        allow_outside: switch the check off (every path is allowed).
    """

    roots: tuple[str, ...]
    allow_outside: bool = False
    # realpath of each parent folder met so far: a manifest names many files per folder, and resolving the
    # folder once leaves one lstat per file (is the file itself a symlink?).
    _folders: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.roots = tuple(dict.fromkeys(_real(root) for root in root_list(self.roots)))

    def resolve(self, path: str) -> str:
        """The real path of `path` (an absolute, normalised path as the manifest readers build them)."""
        folder, name = os.path.split(path)
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = _real(folder)
        joined = os.path.join(real_folder, name)
        return _real(joined) if os.path.islink(joined) else os.path.normcase(joined)

    def contains(self, path: str) -> bool:
        """Whether `path` may be read: the check is off, or its real path lies under an allowed root."""
        if self.allow_outside:
            return True
        real = self.resolve(path)
        return any(is_within(real, root) for root in self.roots)

    def problem(self, source: str, row: int, path: str) -> DataProblem | None:
        """An `outside-data-root` problem for `path` (row `row` of `source`), or None when it may be read."""
        if self.contains(path):
            return None
        real = self.resolve(path)
        where = f"{path} resolves to {real}" if real != os.path.normcase(path) else path
        return make_problem(
            source,
            row,
            path,
            "outside-data-root",
            f"{where}, outside the allowed data roots [{', '.join(self.roots)}]; it was not read. If the "
            f"manifest is right, {OPT_OUT_HINT}",
        )


def manifest_roots(
    manifest: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    allowed_roots: Iterable[str | os.PathLike] | None = None,
    allow_outside: bool = False,
) -> DataRoots:
    """The `DataRoots` of one manifest: its folder (the folder itself for an ImageFolder tree), its
    `image_root` and the extra `allowed_roots`."""
    manifest = os.path.abspath(os.fspath(manifest))
    own = manifest if os.path.isdir(manifest) else os.path.dirname(manifest)
    roots = [own, *root_list(image_root), *root_list(allowed_roots)]
    return DataRoots(tuple(roots), allow_outside=allow_outside)


__all__ = ["OPT_OUT_HINT", "DataRoots", "is_within", "manifest_roots", "root_list"]
