"""transformers' own common model and config test suites, run against retvlp's model classes.

`upstream.py` fetches `tests/test_modeling_common.py` and `tests/test_configuration_common.py` from the sdist
of the INSTALLED transformers release (cached under `~/.cache/retvlp-hf-common/<version>/`) and imports them;
`harness.py` turns one `ModelSpec` per model class into a `ModelTesterMixin` test case (`<Class>Test`). Without
the sdist (no network on the first run) every module here is skipped, naming the version and the pip command.

Adding a model class is one `ModelSpec(...)` entry in the family's `test_hf_common_*.py`: the class, a tiny
config, the common inputs and the tester attributes, plus the upstream tests that do not apply to it, each with
the reason the feature does not exist.
"""
