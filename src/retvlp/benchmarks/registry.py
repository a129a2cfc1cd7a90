"""The recipes, found by file name: every module `benchmarks/datasets/<name>.py` defines `RECIPE`, a
`DatasetRecipe` instance whose `name` is the module's name (a new dataset is one new file)."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from .recipe import DatasetRecipe

SUITES = ("retfound", "flair")


@cache
def recipes() -> dict[str, DatasetRecipe]:
    from . import datasets

    found: dict[str, DatasetRecipe] = {}
    for info in sorted(pkgutil.iter_modules(datasets.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{datasets.__name__}.{info.name}")
        recipe = getattr(module, "RECIPE", None)
        if not isinstance(recipe, DatasetRecipe) or recipe.name != info.name:
            raise TypeError(f"{module.__name__} must define RECIPE, a DatasetRecipe named {info.name!r}.")
        found[recipe.name] = recipe
    return found


def get_recipe(name: str) -> DatasetRecipe:
    known = recipes()
    key = name.strip().lower().replace("-", "").replace("_", "")
    for recipe_name, recipe in known.items():
        if recipe_name.replace("_", "") == key:
            return recipe
    raise KeyError(f"No dataset recipe {name!r}; known: {', '.join(known)} (suites: {', '.join(SUITES)}).")


def suite_recipes(suite: str) -> list[DatasetRecipe]:
    if suite not in SUITES:
        raise KeyError(f"Unknown suite {suite!r}; choose from {', '.join(SUITES)}.")
    return [r for r in recipes().values() if suite in r.suites]
