"""The field's public benchmarks on a user's local copies of the datasets (issue 28).

    recipe.py     the recipe interface: records, splits, manifests, layout errors, reference figures
    registry.py   recipes found by file name in datasets/; the suites ("retfound", "flair")
    datasets/     one module per public dataset, in its publisher's released layout

The names below are imported when first used.
"""

from ..lazy import lazy_package

lazy_package(
    __name__,
    {
        "BenchmarkData": ".recipe",
        "BenchmarkRecord": ".recipe",
        "DatasetRecipe": ".recipe",
        "RecipeLayoutError": ".recipe",
        "ReferenceFigure": ".recipe",
        "get_recipe": ".registry",
        "recipes": ".registry",
        "suite_recipes": ".registry",
    },
    ("datasets", "recipe", "registry"),
)
