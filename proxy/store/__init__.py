"""Shared state across replicas: Redis connections, their fail-open wrapper and key naming.

May import: `proxy.core`. Everything that keeps state in Redis (the compression cache, the
ledger, dashboard sessions) builds on it.
"""
