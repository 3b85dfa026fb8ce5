"""Shared fixtures live in tests/support/*; each module registers here."""

pytest_plugins: list[str] = [
    "tests.support.redis",
    "tests.support.upstream",
    "tests.support.proxy",
    "tests.support.tiny_lm",
    "tests.support.compression",
    "tests.support.browser",
    "tests.support.alignment",
]
