"""Parse and validate policy files into :class:`~proxy.policy.model.Tenant` objects.

Strict on purpose: an unknown key, a wrong type or an out-of-range value is a
problem, because a typo must never silently change how a tenant is compressed.
Every problem is collected (not just the first) and located as ``file:line``.
Key values are never echoed in messages: a plaintext key pasted by mistake into
``api_key_sha256`` must not end up in logs.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from proxy.policy.model import (
    AlignmentPolicy,
    CompressionPolicy,
    PolicyError,
    PolicySnapshot,
    Problem,
    Tenant,
)
from proxy.policy.toml_lines import KeyPath, key_lines, line_of

__all__ = ["load_directory", "parse_policy"]


class _Invalid(Exception):
    """A value failed its check; the message completes ``<key> ...``."""


_Check = Callable[[object], Any]


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"must be a number, got {_kind(value)}")
    return float(value)


def _rate(value: object) -> float:
    number = _number(value)
    if not 0.0 < number <= 1.0:
        raise _Invalid(f"must be in (0, 1], got {value!r}")
    return number


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {_kind(value)}")
    return value


def _integer(low: int, high: int | None = None) -> _Check:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, got {_kind(value)}")
        if value < low or (high is not None and value > high):
            bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise _Invalid(f"must be {bounds}, got {value}")
        return value

    return check


def _at_least(low: float, *, strict: bool) -> _Check:
    def check(value: object) -> float:
        number = _number(value)
        if number < low or (strict and number == low):
            raise _Invalid(f"must be {'>' if strict else '>='} {low:g}, got {value!r}")
        return number

    return check


def _mode(value: object) -> str:
    if value not in ("enforce", "shadow", "off"):
        shown = repr(value) if isinstance(value, str) else _kind(value)
        raise _Invalid(f'must be "enforce", "shadow" or "off", got {shown}')
    return str(value)


def _question_aware(value: object) -> bool | str:
    if not isinstance(value, bool) and value != "auto":
        shown = repr(value) if isinstance(value, str) else _kind(value)
        raise _Invalid(f'must be true, false or "auto", got {shown}')
    return value if isinstance(value, bool) else "auto"


def _fill(value: object) -> str:
    if value not in ("rank", "uniform"):
        shown = repr(value) if isinstance(value, str) else _kind(value)
        raise _Invalid(f'must be "rank" or "uniform", got {shown}')
    return str(value)


def _string_list(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid(f"must be an array of strings, got {_kind(value)}")
    return value


def _globs(value: object) -> tuple[str, ...]:
    globs = _string_list(value)
    if not globs:
        raise _Invalid('must list at least one glob (use mode = "off" to disable compression)')
    if any(not g for g in globs):
        raise _Invalid("must not contain an empty glob")
    return tuple(globs)


def _regexes(value: object) -> tuple[str, ...]:
    patterns = _string_list(value)
    for index, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _Invalid(f"[{index}] is not a valid regular expression: {exc}") from None
    return tuple(patterns)


def _fraction(value: object) -> float:
    number = _number(value)
    if not 0.0 <= number <= 1.0:
        raise _Invalid(f"must be in [0, 1], got {value!r}")
    return number


def _model_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"must be a non-empty string (HF id or folder), got {_kind(value)}")
    if any(c in value for c in "\n\r\0"):
        raise _Invalid("must be a single line")
    return value


def _kind(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


# TOML key -> (CompressionPolicy field, check). ``models`` only in the base table.
_COMPRESSION: dict[str, tuple[str, _Check]] = {
    "mode": ("mode", _mode),
    "rate": ("rate", _rate),
    "instruction_rate": ("instruction_rate", _rate),
    "question_rate": ("question_rate", _rate),
    "min_tokens": ("min_tokens", _integer(0)),
    "question_aware": ("question_aware", _question_aware),
    "segment_tokens": ("segment_tokens", _integer(16, 2048)),
    "granularity_k": ("granularity_k", _at_least(1.0, strict=False)),
    "fill": ("fill", _fill),
    "models": ("models", _globs),
    "max_compression_ms": ("max_compression_ms", _integer(1)),
    "ood_max_nll": ("ood_max_nll", _at_least(0.0, strict=True)),
    "compress_json_tool_results": ("compress_json_tool_results", _boolean),
    "model": ("model", _model_name),
}
_ALIGNMENT: dict[str, tuple[str, _Check]] = {
    "capture": ("capture", _boolean),
    "sample": ("sample", _fraction),
    "max_bytes": ("max_bytes", _integer(4096)),
    "max_files": ("max_files", _integer(1, 1000)),
}
_PROTECT: dict[str, tuple[str, _Check]] = {
    "number": ("number", _boolean),
    "code": ("code", _boolean),
    "json": ("json", _boolean),
    "url": ("url", _boolean),
    "quoted": ("quoted", _boolean),
    "regexes": ("regexes", _regexes),
    "keep_tags": ("keep_tags", _boolean),
}
_OVERRIDE: dict[str, tuple[str, _Check]] = {
    "allow": ("allow_request_override", _boolean),
    "min_rate": ("override_min_rate", _rate),
    "max_rate": ("override_max_rate", _rate),
}
_PER_MODEL = {k: v for k, v in _COMPRESSION.items() if k != "models"}
_TENANT_KEYS = ("name", "api_key_sha256", "anonymous", "admin")
_TOP_KEYS = ("tenant", "compression", "models", "alignment")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")
_POSITION_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)")


class _Parser:
    """Validates one parsed file, collecting located problems."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = key_lines(text)
        self.problems: list[Problem] = []

    def problem(self, where: KeyPath, message: str) -> None:
        self.problems.append(Problem(self.path, line_of(self.lines, where), message))

    def table(self, doc: Mapping[str, Any], where: KeyPath) -> dict[str, Any] | None:
        value = doc.get(str(where[-1]))
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problem(where, f"{_dotted(where)} must be a table, got {_kind(value)}")
            return None
        return value

    def unknown(
        self, table: Mapping[str, Any], where: KeyPath, allowed: Any, hint: str = ""
    ) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
                suffix = f" (did you mean {close[0]!r}?)" if close and not hint else hint
                self.problem((*where, key), f"unknown key {_dotted((*where, key))}{suffix}")

    def fields(
        self, table: Mapping[str, Any], where: KeyPath, schema: Mapping[str, tuple[str, _Check]]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in table.items():
            if key not in schema:
                continue
            name, check = schema[key]
            try:
                out[name] = check(value)
            except _Invalid as exc:
                sep = "" if str(exc).startswith("[") else " "
                self.problem((*where, key), f"{_dotted((*where, key))}{sep}{exc}")
        return out

    def compression(
        self, table: Mapping[str, Any], where: KeyPath, base: CompressionPolicy
    ) -> CompressionPolicy:
        """``base`` updated with the keys of one ``[compression]`` (or per-model) table."""
        # In a per-model table the glob already selects the models.
        schema = _COMPRESSION if where == ("compression",) else _PER_MODEL
        if "models" in table and schema is _PER_MODEL:
            self.problem(
                (*where, "models"),
                f"{_dotted(where)}: 'models' is not allowed here "
                "(the table's glob selects the models)",
            )
            table = {k: v for k, v in table.items() if k != "models"}
        self.unknown(table, where, [*schema, "protect", "override"])
        values = self.fields(table, where, schema)
        protect = self.table(table, (*where, "protect"))
        if protect is not None:
            self.unknown(protect, (*where, "protect"), _PROTECT)
            changes = self.fields(protect, (*where, "protect"), _PROTECT)
            values["protect"] = dataclasses.replace(base.protect, **changes)
        override = self.table(table, (*where, "override"))
        if override is not None:
            self.unknown(override, (*where, "override"), _OVERRIDE)
            values |= self.fields(override, (*where, "override"), _OVERRIDE)
        policy = dataclasses.replace(base, **values)
        if override is not None and policy.override_min_rate > policy.override_max_rate:
            at = (*where, "override", "min_rate")
            self.problem(at, f"{_dotted((*where, 'override'))}: min_rate must be <= max_rate")
        return policy

    def tenant(self, doc: Mapping[str, Any], version: str) -> Tenant | None:
        self.unknown(doc, (), _TOP_KEYS)
        table = self.table(doc, ("tenant",))
        if table is None:
            if "tenant" not in doc:
                self.problem(("tenant",), "missing [tenant] table")
            return None
        self.unknown(table, ("tenant",), _TENANT_KEYS)
        name = table.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            self.problem(
                ("tenant", "name"),
                "tenant.name is required: 1-64 characters of letters, digits, '_', '-', '.'",
            )
        anonymous = self.flag(table, "anonymous")
        admin = self.flag(table, "admin")
        digests = self.digests(table.get("api_key_sha256", []))
        if admin and anonymous:
            self.problem(("tenant", "admin"), "an anonymous tenant cannot be admin")
        if not table.get("api_key_sha256") and not anonymous:
            self.problem(
                ("tenant",), "tenant has no api_key_sha256 and is not anonymous: unreachable"
            )
        compression = self.table(doc, ("compression",)) or {}
        base = self.compression(compression, ("compression",), CompressionPolicy())
        models = self.model_policies(doc, base)
        alignment = self.alignment(doc)
        if self.problems or not isinstance(name, str):
            return None
        return Tenant(
            name=name,
            anonymous=anonymous,
            admin=admin,
            key_digests=digests,
            policy_version=version,
            compression=base,
            model_policies=models,
            source=self.path,
            alignment=alignment,
        )

    def alignment(self, doc: Mapping[str, Any]) -> AlignmentPolicy:
        table = self.table(doc, ("alignment",))
        if table is None:
            return AlignmentPolicy()
        self.unknown(table, ("alignment",), _ALIGNMENT)
        return AlignmentPolicy(**self.fields(table, ("alignment",), _ALIGNMENT))

    def flag(self, table: Mapping[str, Any], key: str) -> bool:
        try:
            return _boolean(table.get(key, False))
        except _Invalid as exc:
            self.problem(("tenant", key), f"tenant.{key} {exc}")
            return False

    def digests(self, value: object) -> tuple[bytes, ...]:
        where = ("tenant", "api_key_sha256")
        if not isinstance(value, list):
            self.problem(where, f"tenant.api_key_sha256 must be an array, got {_kind(value)}")
            return ()
        out: list[bytes] = []
        for index, item in enumerate(value):
            if not isinstance(item, str) or not _HEX_RE.fullmatch(item):
                # The value is deliberately not shown: it may be a plaintext key.
                self.problem(
                    where,
                    f"tenant.api_key_sha256[{index}] must be 64 hex characters "
                    "(the sha256 of the key: `linguagate keys hash KEY`); value not shown",
                )
                continue
            digest = bytes.fromhex(item)
            if digest in out:
                self.problem(where, f"tenant.api_key_sha256[{index}] is listed twice")
            out.append(digest)
        return tuple(out)

    def model_policies(
        self, doc: Mapping[str, Any], base: CompressionPolicy
    ) -> tuple[tuple[str, CompressionPolicy], ...]:
        models = self.table(doc, ("models",))
        out: list[tuple[str, CompressionPolicy]] = []
        for glob, entry in (models or {}).items():
            where: KeyPath = ("models", glob)
            if not glob:
                self.problem(where, 'a [models."glob"] table needs a non-empty glob')
            if not isinstance(entry, dict):
                self.problem(where, f'models."{glob}" must be a table, got {_kind(entry)}')
                continue
            hint = f" (per-model keys go under [{_dotted((*where, 'compression'))}])"
            self.unknown(entry, where, ("compression",), hint)
            table = self.table(entry, (*where, "compression")) or {}
            out.append((glob, self.compression(table, (*where, "compression"), base)))
        return tuple(out)


def _dotted(where: KeyPath) -> str:
    parts = [p if re.fullmatch(r"[A-Za-z0-9_-]+", str(p)) else f'"{p}"' for p in where]
    return ".".join(str(p) for p in parts)


def parse_policy(path: Path, data: bytes) -> tuple[Tenant | None, list[Problem]]:
    """Parse one policy file's bytes; the tenant is ``None`` when there are problems."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(path, 1, f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _POSITION_RE.search(message)
        line = int(position.group(1)) if position else max(1, len(text.splitlines()))
        if position:
            message = f"{message[: position.start()]} (column {position.group(2)})"
        return None, [Problem(path, line, f"invalid TOML: {message}")]
    parser = _Parser(path, text)
    tenant = parser.tenant(doc, hashlib.sha256(data).hexdigest())
    return tenant, sorted(parser.problems, key=lambda p: p.line)


def load_directory(directory: Path) -> PolicySnapshot:
    """Load every ``*.toml`` directly in ``directory`` (sorted by name); raise on any problem."""
    if not Path(directory).is_dir():
        raise PolicyError([Problem(Path(directory), 1, "not a directory (or does not exist)")])
    try:
        files = sorted(p for p in Path(directory).glob("*.toml") if p.is_file())
    except OSError as exc:
        raise PolicyError([Problem(Path(directory), 1, f"cannot list: {exc.strerror}")]) from exc
    if not files:
        raise PolicyError([Problem(Path(directory), 1, "no *.toml policy files found")])
    problems: list[Problem] = []
    tenants: list[Tenant] = []
    lines: dict[Path, dict[tuple[str, ...], int]] = {}
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(Problem(path, 1, f"cannot read: {exc.strerror}"))
            continue
        tenant, found = parse_policy(path, data)
        problems.extend(found)
        if tenant is not None:
            tenants.append(tenant)
            lines[path] = key_lines(data.decode("utf-8"))
    problems.extend(_cross_file_problems(tenants, lines))
    if problems:
        raise PolicyError(problems)
    return PolicySnapshot(tuple(tenants))


def _cross_file_problems(
    tenants: list[Tenant], lines_by_path: Mapping[Path, Mapping[tuple[str, ...], int]]
) -> list[Problem]:
    """Names and key digests unique across tenants; at most one anonymous tenant."""
    problems: list[Problem] = []
    names: dict[str, Path] = {}
    digests: dict[bytes, Tenant] = {}
    anonymous: Tenant | None = None
    for tenant in tenants:
        path = tenant.source or Path("?")
        lines = lines_by_path.get(path, {})
        if tenant.name in names:
            at = line_of(lines, ("tenant", "name"))
            problems.append(
                Problem(
                    path, at, f"tenant name {tenant.name!r} already used by {names[tenant.name]}"
                )
            )
        names.setdefault(tenant.name, path)
        for digest in tenant.key_digests:
            owner = digests.setdefault(digest, tenant)
            if owner is not tenant:
                at = line_of(lines, ("tenant", "api_key_sha256"))
                problems.append(
                    Problem(path, at, f"a key digest is also listed by tenant {owner.name!r}")
                )
        if tenant.anonymous:
            if anonymous is not None:
                at = line_of(lines, ("tenant", "anonymous"))
                message = f"only one tenant may be anonymous; {anonymous.name!r} already is"
                problems.append(Problem(path, at, message))
            else:
                anonymous = tenant
    return problems
