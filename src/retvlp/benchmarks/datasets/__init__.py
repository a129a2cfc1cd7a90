"""One module per public dataset, each defining `RECIPE` (see `benchmarks/recipe.py`)."""
