"""Check (or, with --fix, regenerate) the family folders' generated copies of the shared code.

The files of `src/retvlp/common/` are the single sources. A saved checkpoint must carry flat, self-contained
code, so every family folder (`src/retvlp/<family>/`) that imports one of them (`from .contrastive import ...`)
holds a generated copy: the source's text under a two-line "generated from" header. Which copies a folder
needs is read from its own modules: the shared names they import with a flat relative import, plus what those
shared files import in turn. A folder holding a generated copy it does not need, a hand-edited copy, a missing
copy or a symlink in place of a copy is reported.

    python utils/check_copies.py          # check: exit 1 naming each drifted / missing / extra copy, with a diff
    python utils/check_copies.py --fix    # regenerate every copy (and remove the extra ones)

The same as functions (for tests): `check_copies(package_dir)` returns the problems, `fix_copies(package_dir)`
rewrites the copies.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "src" / "retvlp"
SOURCE_PACKAGE = "common"
HEADER_MARK = "# Generated from src/retvlp/common/"
MAX_DIFF_LINES = 20


def header(name: str) -> str:
    """The first two lines of the generated copy of `common/<name>.py`."""
    return (
        f"{HEADER_MARK}{name}.py by utils/check_copies.py — do not edit;\n"
        "# edit the source and run `python utils/check_copies.py --fix`.\n"
    )


def expected_copy(package_dir: Path, name: str) -> str:
    return header(name) + (package_dir / SOURCE_PACKAGE / f"{name}.py").read_text(encoding="utf-8")


@dataclass(frozen=True)
class CopyProblem:
    path: Path
    kind: str  # "missing", "drifted", "extra", "symlink"
    detail: str = ""

    def format(self, root: Path | None = None) -> str:
        shown = self.path
        if root is not None:
            try:
                shown = self.path.relative_to(root)
            except ValueError:
                pass
        messages = {
            "missing": "missing generated copy",
            "drifted": "differs from its source (edited by hand, or the source changed)",
            "extra": "generated copy that no module of its folder imports",
            "symlink": "is a symlink; shared code must be a generated copy (a real file)",
        }
        text = f"{shown}: {self.kind}: {messages[self.kind]}"
        return f"{text}\n{self.detail}" if self.detail else text


def shared_names(package_dir: Path) -> set[str]:
    return {p.stem for p in (package_dir / SOURCE_PACKAGE).glob("*.py") if p.stem != "__init__"}


def flat_imports(path: Path) -> set[str]:
    """Module names a file imports with `from .x import ...` or `from . import x` (one level, flat)."""
    return set(_flat_imports(path.read_text(encoding="utf-8"), str(path)))


@functools.lru_cache(maxsize=1024)
def _flat_imports(source: str, filename: str) -> frozenset[str]:
    # Keyed on the text: a check parses each shared source once, not once per family that needs it (a tenth of
    # the parses), and an edited file is parsed again.
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
    return frozenset(names)


def is_generated(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, encoding="utf-8") as handle:
        return handle.readline().startswith(HEADER_MARK)


def family_dirs(package_dir: Path) -> list[Path]:
    """Every direct subpackage of the package except the shared sources."""
    return sorted(
        p
        for p in package_dir.iterdir()
        if p.is_dir() and p.name != SOURCE_PACKAGE and (p / "__init__.py").exists()
    )


def needed_copies(package_dir: Path, folder: Path) -> set[str]:
    """The shared modules `folder` needs: those its own modules import, and what they import in turn."""
    shared = shared_names(package_dir)
    pending: set[str] = set()
    for path in folder.glob("*.py"):
        if path.stem in shared and (path.is_symlink() or is_generated(path)):
            continue  # a copy (or a symlink standing in for one): its imports count through its source
        pending |= flat_imports(path) & shared
    needed: set[str] = set()
    while pending:
        name = pending.pop()
        if name not in needed:
            needed.add(name)
            pending |= flat_imports(package_dir / SOURCE_PACKAGE / f"{name}.py") & shared
    return needed


def _diff(actual: str, expected: str, path: Path) -> str:
    lines = list(
        difflib.unified_diff(
            expected.splitlines(),
            actual.splitlines(),
            f"expected {path.name}",
            f"actual {path.name}",
            lineterm="",
            n=1,
        )
    )
    if len(lines) > MAX_DIFF_LINES:
        lines = lines[:MAX_DIFF_LINES] + [f"... ({len(lines) - MAX_DIFF_LINES} more diff lines)"]
    return "\n".join("    " + line for line in lines)


def check_copies(package_dir: Path = PACKAGE_DIR) -> list[CopyProblem]:
    """Every drifted, missing, extra or symlinked copy under `package_dir` (empty when all is in order)."""
    package_dir = Path(package_dir)
    problems: list[CopyProblem] = []
    for folder in family_dirs(package_dir):
        needed = needed_copies(package_dir, folder)
        for name in sorted(needed):
            path = folder / f"{name}.py"
            if path.is_symlink():
                problems.append(CopyProblem(path, "symlink"))
            elif not path.is_file():
                problems.append(CopyProblem(path, "missing"))
            else:
                actual, expected = path.read_text(encoding="utf-8"), expected_copy(package_dir, name)
                if actual != expected:
                    problems.append(CopyProblem(path, "drifted", _diff(actual, expected, path)))
        for path in sorted(folder.glob("*.py")):
            if path.stem in needed:
                continue
            if path.is_symlink():
                problems.append(CopyProblem(path, "symlink"))
            elif is_generated(path):
                problems.append(CopyProblem(path, "extra"))
    return problems


def fix_copies(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Regenerate every needed copy (replacing symlinks), remove the extra ones; returns the paths touched."""
    package_dir = Path(package_dir)
    touched = []
    for problem in check_copies(package_dir):
        path = problem.path
        needed = path.stem in needed_copies(package_dir, path.parent)
        if path.is_symlink() or path.exists():
            path.unlink()
        if needed:
            path.write_text(expected_copy(package_dir, path.stem), encoding="utf-8")
        touched.append(path)
    return touched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fix", action="store_true", help="regenerate the copies instead of checking them")
    parser.add_argument(
        "--package-dir", type=Path, default=PACKAGE_DIR, help="the package (default: src/retvlp)"
    )
    args = parser.parse_args(argv)
    root = args.package_dir.resolve().parents[1]
    if args.fix:
        for path in fix_copies(args.package_dir):
            print(f"regenerated {path.relative_to(root) if path.is_relative_to(root) else path}")
    problems = check_copies(args.package_dir)
    for problem in problems:
        print(problem.format(root), file=sys.stderr)
    if problems:
        print(
            f"{len(problems)} problem(s) with the generated copies of src/retvlp/common/; run "
            "`python utils/check_copies.py --fix`",
            file=sys.stderr,
        )
        return 1
    if not args.fix:
        print("generated copies of src/retvlp/common/ are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
