"""`linguagate keys ...` and `linguagate policies ...`: operator commands for tenants.

* ``keys hash KEY``: the digest to list in a policy's ``api_key_sha256``.
* ``keys generate``: a fresh random proxy key and its digest.
* ``policies check [DIR]``: validate every ``DIR/*.toml`` the way the server loads them.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from proxy.gateway.tenancy import hash_api_key_hex
from proxy.policy.model import CompressionPolicy, PolicyError, Tenant
from proxy.policy.schema import load_directory

__all__ = ["add_subcommands"]


def add_subcommands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``keys`` and ``policies`` on the ``linguagate`` subparsers."""
    keys = sub.add_parser("keys", help="proxy API keys: hash or generate them")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    hash_cmd = keys_sub.add_parser(
        "hash",
        help="print the sha256 hex digest of KEY, for a policy's api_key_sha256",
        description="Print the sha256 hex digest of a proxy API key. Policy files list "
        "digests only, never keys. Pass '-' to read the key from stdin (keeps it out of "
        "shell history).",
    )
    hash_cmd.add_argument("key", metavar="KEY", help="the proxy API key, or '-' for stdin")
    hash_cmd.set_defaults(func=_keys_hash)
    generate = keys_sub.add_parser("generate", help="print a new random proxy key and its digest")
    generate.set_defaults(func=_keys_generate)

    policies = sub.add_parser("policies", help="tenant policy files: validate them")
    policies_sub = policies.add_subparsers(dest="policies_command", metavar="ACTION", required=True)
    check = policies_sub.add_parser(
        "check",
        help="validate DIR/*.toml; print file:line: message per problem (exit 1 if any)",
        description="Validate every *.toml directly in DIR exactly as `linguagate serve` "
        "loads them. Each problem is printed as file:line: message and the exit status is 1; "
        "otherwise one summary line per tenant is printed.",
    )
    check.add_argument(
        "directory",
        metavar="DIR",
        type=Path,
        nargs="?",
        default=None,
        help="policies folder (default: $LINGUAGATE_POLICIES or ./policies)",
    )
    check.set_defaults(func=_policies_check)


def _keys_hash(args: argparse.Namespace) -> int:
    key: str = args.key
    if key == "-":
        key = sys.stdin.readline().rstrip("\r\n")
    if not key:
        print("linguagate keys hash: the key is empty", file=sys.stderr)
        return 2
    print(hash_api_key_hex(key))
    return 0


def _keys_generate(args: argparse.Namespace) -> int:
    key = "lg-" + secrets.token_urlsafe(32)
    print(f"key:            {key}")
    print(f"api_key_sha256: {hash_api_key_hex(key)}")
    return 0


def _policies_check(args: argparse.Namespace) -> int:
    directory: Path = args.directory or Path(os.environ.get("LINGUAGATE_POLICIES") or "policies")
    try:
        snapshot = load_directory(directory)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem)
        count = len(exc.problems)
        print(f"{directory}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    for tenant in snapshot.tenants:
        print(_summary(tenant))
    return 0


def _summary(tenant: Tenant) -> str:
    policy = tenant.compression
    roles = [r for r, on in (("anonymous", tenant.anonymous), ("admin", tenant.admin)) if on]
    parts = [
        f"OK {tenant.name} ({tenant.source})",
        f"keys={len(tenant.key_digests)}",
        *roles,
        _describe(policy),
    ]
    if tenant.model_policies:
        parts.append(f"model overrides: {', '.join(g for g, _ in tenant.model_policies)}")
    parts.append(f"version={tenant.policy_version[:12]}")
    return " ".join(parts)


def _describe(policy: CompressionPolicy) -> str:
    text = f"mode={policy.mode}"
    if policy.mode != "off":
        text += f" rate={policy.rate:g} min_tokens={policy.min_tokens}"
        text += f" models={','.join(policy.models)}"
    return text
