"""Markers of transformers' common test suite (its own `conftest.py` registers them; it is not in the sdist)."""

UPSTREAM_MARKERS = (
    "accelerate_tests",
    "flash_attn_test",
    "flash_attn_3_test",
    "flash_attn_4_test",
    "torch_compile_test",
    "slow",  # transformers.testing_utils.slow marks the tests it skips without RUN_SLOW
)


def pytest_configure(config):
    for marker in UPSTREAM_MARKERS:
        config.addinivalue_line("markers", f"{marker}: marker of transformers' common test suite")
