"""Policy files: strict validation with file:line problems, per-model overrides, hot reload."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import tomllib
from pathlib import Path

import pytest

from proxy.policy.model import (
    CompressionPolicy,
    PolicyError,
    PolicySnapshot,
    Problem,
    ProtectPolicy,
)
from proxy.policy.schema import (
    _COMPRESSION,
    _OVERRIDE,
    _PROTECT,
    _TENANT_KEYS,
    load_directory,
    parse_policy,
)
from proxy.policy.store import PolicyStore
from proxy.policy.toml_lines import key_lines, line_of

REPO = Path(__file__).resolve().parents[3]
KEY_A = hashlib.sha256(b"key-a").hexdigest()
KEY_B = hashlib.sha256(b"key-b").hexdigest()

FULL = f"""\
[tenant]
name = "research"
api_key_sha256 = ["{KEY_A}", "{KEY_B.upper()}"]
admin = true

[compression]
mode = "enforce"
rate = 0.4
instruction_rate = 0.85
question_rate = 0.9
min_tokens = 0
question_aware = true
segment_tokens = 64
granularity_k = 3
models = ["gpt-4*", "o1*"]
max_compression_ms = 5000
ood_max_nll = 6.5
compress_json_tool_results = true

[compression.protect]
number = true
quoted = true
regexes = ["ORD-\\\\d+"]
keep_tags = false

[compression.override]
allow = true
min_rate = 0.2
max_rate = 0.9

[models."gpt-4o-mini*".compression]
rate = 0.25
protect.code = false

[models."gpt-4o*".compression]
mode = "shadow"
override = {{ max_rate = 0.5 }}
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(text: str, name: str = "t.toml") -> list[str]:
    _, problems = parse_policy(Path(name), text.encode())
    return [str(p) for p in problems]


def tenant_text(name: str, *, key: str | None = None, extra: str = "") -> str:
    keys = f'api_key_sha256 = ["{key}"]\n' if key else "anonymous = true\n"
    return f'[tenant]\nname = "{name}"\n{keys}{extra}'


def test_full_file_maps_every_key() -> None:
    tenant, problems = parse_policy(Path("research.toml"), FULL.encode())
    assert problems == []
    assert tenant is not None
    assert tenant.name == "research" and tenant.admin and not tenant.anonymous
    assert tenant.key_digests == (bytes.fromhex(KEY_A), bytes.fromhex(KEY_B))
    assert tenant.policy_version == hashlib.sha256(FULL.encode()).hexdigest()
    assert tenant.compression == CompressionPolicy(
        mode="enforce",
        rate=0.4,
        instruction_rate=0.85,
        question_rate=0.9,
        min_tokens=0,
        question_aware=True,
        segment_tokens=64,
        granularity_k=3.0,
        models=("gpt-4*", "o1*"),
        max_compression_ms=5000,
        protect=ProtectPolicy(number=True, quoted=True, regexes=("ORD-\\d+",), keep_tags=False),
        ood_max_nll=6.5,
        compress_json_tool_results=True,
        allow_request_override=True,
        override_min_rate=0.2,
        override_max_rate=0.9,
    )
    assert isinstance(tenant.compression.granularity_k, float)


def test_policy_for_uses_first_matching_override_in_file_order() -> None:
    tenant, _ = parse_policy(Path("research.toml"), FULL.encode())
    assert tenant is not None
    base = tenant.compression
    mini = tenant.policy_for("gpt-4o-mini-2024-07-18")
    assert mini.rate == 0.25 and mini.mode == "enforce"
    # Sub-tables merge field by field over the base.
    assert mini.protect == ProtectPolicy(
        number=True, code=False, quoted=True, regexes=("ORD-\\d+",), keep_tags=False
    )
    four_o = tenant.policy_for("gpt-4o")
    assert four_o.mode == "shadow" and four_o.rate == 0.4
    assert (four_o.override_min_rate, four_o.override_max_rate) == (0.2, 0.5)
    assert tenant.policy_for("gpt-4-turbo") is base
    assert tenant.policy_for(None) is base
    assert tenant.policy_for("GPT-4O") is base  # globs are case-sensitive


def test_applies_to_matches_model_globs() -> None:
    policy = CompressionPolicy(models=("gpt-4*", "o1-?ini"))
    assert policy.applies_to("gpt-4o")
    assert policy.applies_to("o1-mini")
    assert not policy.applies_to("gpt-3.5-turbo")
    assert not policy.applies_to(None)
    assert CompressionPolicy().applies_to(None)
    assert CompressionPolicy().applies_to("anything")


def test_defaults_when_only_tenant_table() -> None:
    tenant, problems = parse_policy(Path("a.toml"), tenant_text("a", key=KEY_A).encode())
    assert problems == []
    assert tenant is not None
    assert tenant.compression == CompressionPolicy()
    assert tenant.compression.mode == "off"


def test_problem_str_is_file_line_message() -> None:
    assert str(Problem(Path("p/x.toml"), 7, "bad")) == "p/x.toml:7: bad"


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ("[compression]\nrat = 0.5\n", 5, "unknown key compression.rat (did you mean 'rate'?)"),
        ("[compression]\nrate = 0\n", 5, "compression.rate must be in (0, 1], got 0"),
        ("[compression]\nrate = 1.01\n", 5, "must be in (0, 1]"),
        ("[compression]\nrate = true\n", 5, "compression.rate must be a number, got a boolean"),
        ("[compression]\nrate = '0.5'\n", 5, "must be a number, got a string"),
        ("[compression]\nquestion_rate = -1\n", 5, "compression.question_rate must be in (0, 1]"),
        ("[compression]\nmin_tokens = -1\n", 5, "compression.min_tokens must be >= 0, got -1"),
        ("[compression]\nmin_tokens = 1.5\n", 5, "must be an integer, got a float"),
        ("[compression]\nsegment_tokens = 15\n", 5, "must be [16, 2048], got 15"),
        ("[compression]\nsegment_tokens = 2049\n", 5, "must be [16, 2048], got 2049"),
        ("[compression]\ngranularity_k = 0.5\n", 5, "granularity_k must be >= 1"),
        ("[compression]\nmode = 'on'\n", 5, 'must be "enforce", "shadow" or "off", got \'on\''),
        ("[compression]\nmodels = []\n", 5, "must list at least one glob"),
        ("[compression]\nmodels = ['']\n", 5, "must not contain an empty glob"),
        ("[compression]\nmodels = 'gpt-4*'\n", 5, "must be an array of strings, got a string"),
        ("[compression]\nmax_compression_ms = 0\n", 5, "must be >= 1, got 0"),
        ("[compression]\nood_max_nll = 0\n", 5, "ood_max_nll must be > 0"),
        ("[compression]\nquestion_aware = 1\n", 5, 'true, false or "auto", got an integer'),
        ("[compression]\nquestion_aware = 'yes'\n", 5, """true, false or "auto", got 'yes'"""),
        ("\n[compression.protect]\nregexes = ['(']\n", 6, "regexes[0] is not a valid regular"),
        ("[compression.protect]\nnumbers = true\n", 5, "unknown key compression.protect.numbers"),
        ("[compression]\nprotect = 3\n", 5, "compression.protect must be a table"),
        ("[compression.override]\nmin_rate = 0.6\nmax_rate = 0.5\n", 5, "min_rate must be <="),
        ("[compression.override]\nallowed = true\n", 5, "unknown key compression.override.allowed"),
        ("[models.'gpt*']\nrate = 0.1\n", 5, 'go under [models."gpt*".compression]'),
        ("[models.'gpt*'.compression]\nmodels = ['x']\n", 5, "'models' is not allowed here"),
        ("[models.'gpt*'.compression]\nrate = 2\n", 5, 'models."gpt*".compression.rate must be'),
        ("[models.'gpt*'.compression.protect]\nurl = 'yes'\n", 5, "protect.url must be true"),
        ("[extra]\n", 4, "unknown key extra"),
    ],
)
def test_invalid_values_are_located(body: str, line: int, fragment: str) -> None:
    text = tenant_text("t", key=KEY_A) + body
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"t.toml:{line}: "), problems
    assert fragment in problems[0]


def test_tenant_table_problems() -> None:
    assert problems_of("[compression]\nmode = 'off'\n") == ["t.toml:1: missing [tenant] table"]
    assert "name is required" in problems_of('[tenant]\nname = "a b"\nanonymous = true\n')[0]
    assert "name is required" in problems_of("[tenant]\nanonymous = true\n")[0]
    assert problems_of('[tenant]\nname = "a"\n') == [
        "t.toml:1: tenant has no api_key_sha256 and is not anonymous: unreachable"
    ]
    admin_anon = problems_of('[tenant]\nname = "a"\nanonymous = true\nadmin = true\n')
    assert admin_anon == ["t.toml:4: an anonymous tenant cannot be admin"]
    not_bool = problems_of('[tenant]\nname = "a"\nanonymous = "yes"\n')
    assert "t.toml:3: tenant.anonymous must be true or false, got a string" in not_bool
    top = problems_of('models = 3\n[tenant]\nname = "a"\nanonymous = true\n')
    assert top == ["t.toml:1: models must be a table, got an integer"]


def test_bad_digest_is_reported_without_echoing_the_value() -> None:
    text = '[tenant]\nname = "a"\napi_key_sha256 = [\n  "sk-live-SECRET",\n]\n'
    problems = problems_of(text)
    assert problems[0].startswith("t.toml:3: tenant.api_key_sha256[0] must be 64 hex")
    assert all("SECRET" not in p for p in problems)
    dup = problems_of(f'[tenant]\nname = "a"\napi_key_sha256 = ["{KEY_A}", "{KEY_A}"]\n')
    assert dup == ["t.toml:3: tenant.api_key_sha256[1] is listed twice"]
    not_list = problems_of(f'[tenant]\nname = "a"\napi_key_sha256 = "{KEY_A}"\n')
    assert not_list[0] == "t.toml:3: tenant.api_key_sha256 must be an array, got a string"


def test_all_problems_are_collected() -> None:
    text = tenant_text("t", key=KEY_A) + "[compression]\nrate = 3\nmode = 'x'\ntypo = 1\n"
    # Every problem, in line order.
    assert [p.split(":")[1] for p in problems_of(text)] == ["5", "6", "7"]


def test_toml_syntax_error_uses_tomllib_line() -> None:
    problems = problems_of('[tenant]\nname = "a"\nanonymous = tru\n')
    assert len(problems) == 1
    assert problems[0].startswith("t.toml:3: invalid TOML: ")
    assert "column" in problems[0]
    duplicate = problems_of('[tenant]\nname = "a"\nname = "b"\n')
    assert duplicate[0].startswith("t.toml:3: invalid TOML")


def test_non_utf8_file() -> None:
    _, problems = parse_policy(Path("t.toml"), b"\xff\xfe[tenant]")
    assert str(problems[0]).startswith("t.toml:1: not UTF-8 text")


def test_load_directory_cross_file_problems(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", tenant_text("a", key=KEY_A))
    write(tmp_path, "b.toml", tenant_text("a", key=KEY_A))
    write(tmp_path, "c.toml", tenant_text("c"))
    write(tmp_path, "d.toml", "\n" + tenant_text("d"))
    with pytest.raises(PolicyError) as info:
        load_directory(tmp_path)
    got = [str(p) for p in info.value.problems]
    b, d = tmp_path / "b.toml", tmp_path / "d.toml"
    assert got == [
        f"{b}:2: tenant name 'a' already used by {tmp_path / 'a.toml'}",
        f"{b}:3: a key digest is also listed by tenant 'a'",
        f"{d}:4: only one tenant may be anonymous; 'c' already is",
    ]
    assert str(info.value).startswith("invalid policies:\n")


def test_load_directory_ignores_subfolders_and_other_files(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", tenant_text("a", key=KEY_A))
    (tmp_path / "examples").mkdir()
    write(tmp_path / "examples", "broken.toml", "not toml at all [")
    write(tmp_path, "notes.txt", "hello")
    snapshot = load_directory(tmp_path)
    assert [t.name for t in snapshot.tenants] == ["a"]


def test_empty_or_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no \\*.toml policy files"):
        load_directory(tmp_path)
    with pytest.raises(PolicyError, match="not a directory"):
        load_directory(tmp_path / "missing")


def test_shipped_policies_are_valid() -> None:
    snapshot = load_directory(REPO / "policies")
    default = snapshot.tenant("default")
    assert default is not None and default.anonymous
    assert default.compression.mode == "off"
    assert snapshot.anonymous is default
    for example in sorted((REPO / "policies" / "examples").glob("*.toml")):
        tenant, problems = parse_policy(example, example.read_bytes())
        assert problems == [] and tenant is not None, problems


def test_store_requires_load(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path)
    with pytest.raises(RuntimeError):
        _ = store.current
    with pytest.raises(PolicyError):
        store.load()


def bump(path: Path, text: str) -> None:
    """Rewrite ``path`` and move its mtime forward, so coarse clocks still see a change."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 10_000_000, before + 10_000_000))


def test_store_hot_reload(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = write(tmp_path, "a.toml", tenant_text("a", key=KEY_A))
    store = PolicyStore(tmp_path)
    first = store.load()
    assert store.current is first
    assert store.reload_if_changed() is False

    bump(a, tenant_text("a", key=KEY_A, extra="[compression]\nmode = 'enforce'\n"))
    assert store.reload_if_changed() is True
    second = store.current
    assert second is not first
    tenant = second.tenant("a")
    assert tenant is not None and tenant.compression.mode == "enforce"
    assert tenant.policy_version != first.tenants[0].policy_version
    assert store.reload_if_changed() is False

    # An invalid change keeps the last good snapshot and logs once, without key material.
    with caplog.at_level(logging.WARNING, logger="linguagate.policy"):
        bump(a, '[tenant]\nname = "a"\napi_key_sha256 = ["sk-secret-1"]\n')
        assert store.reload_if_changed() is False
        assert store.reload_if_changed() is False
    assert store.current is second
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert f"{a}:3: tenant.api_key_sha256[0]" in warnings[0]
    assert "sk-secret-1" not in warnings[0]

    # New file added, then removed: both are changes.
    write(tmp_path, "a.toml", tenant_text("a", key=KEY_A))
    write(tmp_path, "b.toml", tenant_text("b", key=KEY_B))
    assert store.reload_if_changed() is True
    assert [t.name for t in store.current.tenants] == ["a", "b"]
    (tmp_path / "b.toml").unlink()
    assert store.reload_if_changed() is True
    assert [t.name for t in store.current.tenants] == ["a"]

    # Removing every file is invalid (no tenants at all): the last snapshot stays.
    kept = store.current
    a.unlink()
    assert store.reload_if_changed() is False
    assert store.current is kept


def test_store_concurrent_readers_always_see_a_complete_snapshot(tmp_path: Path) -> None:
    a = write(tmp_path, "a.toml", tenant_text("a", key=KEY_A))
    write(tmp_path, "b.toml", tenant_text("b", key=KEY_B))
    store = PolicyStore(tmp_path)
    store.load()
    stop = threading.Event()
    seen: list[PolicySnapshot] = []
    torn: list[PolicySnapshot] = []

    def read() -> None:
        while not stop.is_set():
            snapshot = store.current
            if {t.name for t in snapshot.tenants} != {"a", "b"}:
                torn.append(snapshot)
            seen.append(snapshot)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    try:
        for i in range(20):
            mode = "enforce" if i % 2 else "off"
            bump(a, tenant_text("a", key=KEY_A, extra=f"[compression]\nmode = '{mode}'\n"))
            store.reload_if_changed()
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert seen and not torn
    final = store.current.tenant("a")
    assert final is not None and final.compression.mode == "enforce"


def test_every_field_has_a_toml_key_and_the_example_shows_every_key() -> None:
    mapped = {name for name, _ in [*_COMPRESSION.values(), *_OVERRIDE.values()]}
    assert mapped | {"protect"} == {f.name for f in dataclasses.fields(CompressionPolicy)}
    assert {name for name, _ in _PROTECT.values()} == {
        f.name for f in dataclasses.fields(ProtectPolicy)
    }
    doc = tomllib.loads((REPO / "policies/examples/research.toml").read_text("utf-8"))
    assert set(doc["tenant"]) == set(_TENANT_KEYS)
    assert set(doc["compression"]) == {*_COMPRESSION, "protect", "override"}
    assert set(doc["compression"]["protect"]) == set(_PROTECT)
    assert set(doc["compression"]["override"]) == set(_OVERRIDE)


def test_key_lines_headers_dotted_quoted_and_multiline() -> None:
    text = (
        "top = 1\n"
        '[a . "b.c" ]\n'
        "x.y = 2\n"
        "'lit' = 3\n"
        'doc = """\n'
        "fake = 4\n"
        '"""\n'
        "arr = [\n"
        "  1,\n"
        "]\n"
        "[[list]]\n"
        "after = 5\n"
    )
    lines = key_lines(text)
    assert lines[("top",)] == 1
    assert lines[("a", "b.c")] == 2
    assert lines[("a", "b.c", "x", "y")] == 3
    assert lines[("a", "b.c", "lit")] == 4
    assert lines[("a", "b.c", "doc")] == 5
    assert ("a", "b.c", "fake") not in lines
    assert lines[("list", "after")] == 12
    assert line_of(lines, ("a", "b.c", "arr", 0)) == 8
    assert line_of(lines, ("a", "b.c", "x", "y", "z")) == 3
    assert line_of(lines, ("nowhere",)) == 1
