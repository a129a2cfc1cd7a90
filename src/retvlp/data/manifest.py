"""Manifest readers: turn the files users already have into `ManifestRecord`s.

Supported sources:

* CSV / TSV with an image column plus `text` and/or `label` / `labels` (and optionally `patient_id`);
* FLAIR-style CSV (`image`, `atributes`, `categories`, the last two stringified Python lists);
* JSON lines (one object per line; a `.json` file may also hold one list of objects);
* ImageFolder trees (`root/<class name>/<image files>`; images directly under `root` are unpaired);
* any `datasets.Dataset` with an image column (`datasets.Image` feature or path strings), via
  `manifest_from_hf_dataset`.

Every record gets a role: `paired` (has a caption), `categorical` (labels, no caption) or `unpaired` (image
only), unless a manifest-level `role=` forces one. Rows that cannot be read (malformed JSON, not UTF-8, no image
path, broken CSV quoting) never crash the reader and are never dropped silently: they become `DataProblem`s in
`Manifest.problems`, each naming the file and the row.

The readers live in modules by meaning: records and field parsing in `manifest_records`, column resolution and
the per-row reader in `manifest_columns`, bytes to lines in `lines`, the CSV/TSV/FLAIR, JSON and ImageFolder
readers in `manifest_formats`, the `datasets` reader in `hf_manifest`. This module dispatches `read_manifest`
and keeps every public name importable from here.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .hf_manifest import manifest_from_hf_dataset
from .lines import readable, split_lines, utf8_problem_message
from .manifest_formats import (
    IMAGE_EXTENSIONS,
    delimited_format,
    delimiter_for,
    detect_format,
    read_delimited,
    read_image_folder,
    read_json_manifest,
)
from .manifest_records import (
    ATTRIBUTE_COLUMNS,
    DEFAULT_GROUP_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_LABEL_COLUMN,
    DEFAULT_TEXT_COLUMN,
    GROUP_FALLBACKS,
    LABEL_FALLBACKS,
    ROLES,
    TEXT_FALLBACKS,
    HFImageRef,
    Manifest,
    ManifestRecord,
    check_role,
    parse_labels,
)
from .roots import DataRoots, manifest_roots, root_list

__all__ = [
    "ATTRIBUTE_COLUMNS",
    "DEFAULT_GROUP_COLUMN",
    "DEFAULT_IMAGE_COLUMN",
    "DEFAULT_LABEL_COLUMN",
    "DEFAULT_TEXT_COLUMN",
    "FORMATS",
    "GROUP_FALLBACKS",
    "IMAGE_EXTENSIONS",
    "LABEL_FALLBACKS",
    "ROLES",
    "TEXT_FALLBACKS",
    "HFImageRef",
    "Manifest",
    "ManifestRecord",
    "manifest_from_hf_dataset",
    "parse_labels",
    "read_manifest",
    "read_manifests",
    "readable",
    "split_lines",
    "utf8_problem_message",
    "with_root_options",
]

FORMATS = ("csv", "tsv", "flair", "jsonl", "json", "imagefolder")


def _manifest_format(source: str, format: str | None) -> str:
    """The format to read `source` as: `format` if given (checked against `FORMATS`), else detected."""
    if not os.path.exists(source):
        raise FileNotFoundError(errno.ENOENT, "manifest not found", source)
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown manifest format {format!r}; expected one of {', '.join(FORMATS)}")
    return format or detect_format(source)


def _image_folder_manifest(
    source: str,
    role: str | None,
    allowed_roots: Sequence[str | os.PathLike] | None,
    allow_outside_data_roots: bool,
) -> Manifest:
    if not os.path.isdir(source):
        raise ValueError(f"{source}: format 'imagefolder' needs a directory")
    roots = manifest_roots(source, None, allowed_roots, allow_outside_data_roots)
    records, problems = read_image_folder(source, source, role, roots)
    return Manifest(records, problems, source, "imagefolder")


def _image_base(source: str, image_root: str | os.PathLike | None) -> str:
    """The folder relative image paths are resolved against: `image_root` (which must exist), else the
    manifest file's folder."""
    if image_root is None:
        return os.path.dirname(os.path.abspath(source))
    base = os.path.abspath(os.path.expanduser(os.fspath(image_root)))
    if not os.path.isdir(base):
        raise FileNotFoundError(errno.ENOENT, "image root not found", os.fspath(image_root))
    return base


def _file_manifest(
    source: str,
    detected: str,
    base: str,
    roots: DataRoots,
    role: str | None,
    label_separator: str | None,
    column_args: dict,
) -> Manifest:
    """A CSV/TSV/FLAIR or JSON manifest file."""
    if detected in ("jsonl", "json"):
        records, problems, detected = read_json_manifest(
            source,
            source,
            base,
            role,
            label_separator,
            column_args,
            allow_array=detected == "json",
            roots=roots,
        )
        return Manifest(records, problems, source, detected)
    records, problems, header = read_delimited(
        source, source, delimiter_for(detected, source), base, role, label_separator, column_args, roots
    )
    return Manifest(records, problems, source, delimited_format(detected, header))


def read_manifest(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    image_column: str = DEFAULT_IMAGE_COLUMN,
    text_column: str | None = DEFAULT_TEXT_COLUMN,
    label_column: str | None = DEFAULT_LABEL_COLUMN,
    group_column: str | None = DEFAULT_GROUP_COLUMN,
    role: str | None = None,
    format: str | None = None,
    label_separator: str | None = "|",
    allowed_roots: Sequence[str | os.PathLike] | None = None,
    allow_outside_data_roots: bool = False,
) -> Manifest:
    """Read a CSV/TSV, FLAIR CSV, JSON-lines manifest or an ImageFolder tree.

    Relative image paths are resolved against `image_root` if given, else the manifest file's folder. Columns
    left at their default names fall back to `caption` (text), `labels` / `categories` (labels), `group` /
    `patient` (group) when absent; a column named explicitly must exist. `format`: None (from the extension:
    .csv/.tsv/.jsonl/.json, a directory is an ImageFolder) or one of `FORMATS`.

    Data roots (`retvlp.data.roots`): an image path that resolves (symlinks and `..` followed) outside the
    manifest's folder, `image_root` and the extra `allowed_roots` becomes an `outside-data-root` problem, not a
    record, and is never opened; `allow_outside_data_roots=True` switches the check off.
    """
    check_role(role)
    source = os.fspath(path)
    detected = _manifest_format(source, format)
    if detected == "imagefolder":
        return _image_folder_manifest(source, role, allowed_roots, allow_outside_data_roots)
    if os.path.isdir(source):
        raise ValueError(f"{source} is a directory; use format='imagefolder' (or no format) to read it")
    base = _image_base(source, image_root)
    roots = manifest_roots(source, image_root, allowed_roots, allow_outside_data_roots)
    column_args = dict(
        image_column=image_column,
        text_column=text_column,
        label_column=label_column,
        group_column=group_column,
    )
    return _file_manifest(source, detected, base, roots, role, label_separator, column_args)


def with_root_options(
    spec: Mapping[str, Any],
    allowed_roots: Sequence[str | os.PathLike] | None = None,
    allow_outside_data_roots: bool = False,
) -> dict[str, Any]:
    """`spec` with run-wide data-root settings added: the spec's own `allowed_roots` are kept and the run's
    appended; `allow_outside_data_roots` is on when either the spec or the run switches it on."""
    options = dict(spec)
    roots = [*root_list(options.get("allowed_roots")), *root_list(allowed_roots)]
    if roots:
        options["allowed_roots"] = roots
    if allow_outside_data_roots:
        options["allow_outside_data_roots"] = True
    return options


def read_manifests(
    specs: Sequence[Mapping[str, Any]],
    *,
    allowed_roots: Sequence[str | os.PathLike] | None = None,
    allow_outside_data_roots: bool = False,
) -> list[Manifest]:
    """Read several manifests: each spec is a dict with `path` plus `read_manifest` keyword arguments;
    `allowed_roots` / `allow_outside_data_roots` apply to every spec (see `with_root_options`)."""
    manifests = []
    for spec in specs:
        options = with_root_options(spec, allowed_roots, allow_outside_data_roots)
        if "path" not in options:
            raise ValueError(f"manifest spec {spec!r} has no 'path'")
        manifests.append(read_manifest(options.pop("path"), **options))
    return manifests
