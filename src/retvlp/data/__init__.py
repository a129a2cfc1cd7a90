"""Data layer: manifests, validation, the cached Arrow image store, step samplers and the synthetic fundus demo."""
