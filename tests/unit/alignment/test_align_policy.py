"""Policy keys for alignment ([alignment], [compression] model) and the compressor pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.compression.pool import CompressorPool
from proxy.compression.service import CompressorService
from proxy.policy.model import AlignmentPolicy
from proxy.policy.schema import parse_policy

_HEAD = '[tenant]\nname = "t"\nanonymous = true\n'


def _parse(text: str) -> tuple[Any, list[str]]:
    tenant, problems = parse_policy(Path("t.toml"), (_HEAD + text).encode())
    return tenant, [str(p) for p in problems]


def test_alignment_section_defaults_off_and_parses() -> None:
    tenant, problems = _parse("")
    assert not problems and tenant.alignment == AlignmentPolicy(capture=False)
    tenant, problems = _parse(
        "[alignment]\ncapture = true\nsample = 0.25\nmax_bytes = 8192\nmax_files = 3\n")
    assert not problems
    assert tenant.alignment == AlignmentPolicy(True, 0.25, 8192, 3)


def test_alignment_problems_are_located() -> None:
    _, problems = _parse("[alignment]\ncapture = 1\nsample = 1.5\nmax_bytes = 10\n"
                         "max_files = 0\ncaptur = true\n")
    assert problems == [
        "t.toml:5: alignment.capture must be true or false, got an integer",
        "t.toml:6: alignment.sample must be in [0, 1], got 1.5",
        "t.toml:7: alignment.max_bytes must be >= 4096, got 10",
        "t.toml:8: alignment.max_files must be [1, 1000], got 0",
        "t.toml:9: unknown key alignment.captur (did you mean 'capture'?)",
    ]


def test_model_per_tenant_and_per_model_glob() -> None:
    tenant, problems = _parse(
        '[compression]\nmode = "enforce"\nmodel = "/models/aligned"\n\n'
        '[models."gpt-4o*".compression]\nmodel = "other/model"\n'
        '[models."o1*".compression]\nrate = 0.3\n')
    assert not problems
    assert tenant.policy_for("gpt-3.5").model == "/models/aligned"
    assert tenant.policy_for("gpt-4o-mini").model == "other/model"
    assert tenant.policy_for("o1-mini").model == "/models/aligned"  # inherited
    _, problems = _parse('[compression]\nmodel = ""\n')
    assert problems == ["t.toml:5: compression.model must be a non-empty string "
                        "(HF id or folder), got a string"]


class _Engine:
    device = "cpu"

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id


def _pool(made: list[str], *, fail: str = "") -> CompressorPool:
    def factory(name: str) -> CompressorService:
        made.append(name)

        def load() -> Any:
            if name == fail:
                raise OSError("no such model folder")
            return _Engine(name)

        return CompressorService(load, description=name)

    default = CompressorService.ready(_Engine("default"))  # type: ignore[arg-type]
    return CompressorPool(default, factory, default_name="dflt", max_engines=2)


def test_pool_loads_named_models_once_and_bounds_them() -> None:
    made: list[str] = []
    pool = _pool(made)
    assert pool.service_for(None) is pool.default and pool.service_for("dflt") is pool.default
    a = pool.service_for("a")
    assert pool.service_for("a") is a and made == ["a"]
    assert a.wait_ready(10) and a.status == ("ok", "a")
    pool.service_for("b")
    pool.service_for("a")  # a is now the most recently used
    pool.service_for("c")  # evicts b
    assert set(pool.statuses()) == {"a", "c"} and made == ["a", "b", "c"]
    pool.close()
    with pytest.raises(RuntimeError):
        pool.service_for("d")


def test_a_model_that_fails_to_load_is_down_with_its_reason() -> None:
    pool = _pool([], fail="broken")
    pool.ensure(["broken", None, "dflt"])
    service = pool.service_for("broken")
    assert service.wait_ready(10)
    state, detail = pool.statuses()["broken"]
    assert state == "down" and detail is not None and "no such model folder" in detail
    pool.close()
