"""Data layer: manifests, validation, the cached Arrow image store, step samplers, text corpora and the loading
helpers the training and evaluation layers share (the synthetic demo data is `retvlp.synthetic`)."""
