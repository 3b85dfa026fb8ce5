"""The policy store: loads a folder of tenant files and swaps in a new snapshot on change."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from proxy.policy.model import PolicyError, PolicySnapshot
from proxy.policy.schema import load_directory

__all__ = ["PolicyStore"]

_LOG = logging.getLogger("linguagate.policy")


_Fingerprint = tuple[tuple[str, int, int], ...]


def _fingerprint(directory: Path) -> _Fingerprint:
    entries: list[tuple[str, int, int]] = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.endswith(".toml") and entry.is_file():
                    st = entry.stat()
                    entries.append((entry.name, st.st_mtime_ns, st.st_size))
    except OSError:
        return ()
    return tuple(sorted(entries))


class PolicyStore:
    """Loads ``directory/*.toml`` (not subfolders) and hot-reloads it.

    Readers use :attr:`current`, a plain attribute read; a reload builds a complete
    new snapshot and publishes it with one assignment, so a request never sees a
    half-loaded set of tenants. Reloads are serialised by a lock.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._snapshot: PolicySnapshot | None = None
        self._seen: _Fingerprint | None = None

    @property
    def current(self) -> PolicySnapshot:
        """The latest valid snapshot; :meth:`load` must have succeeded once."""
        snapshot = self._snapshot
        if snapshot is None:
            raise RuntimeError("PolicyStore.load() has not succeeded yet")
        return snapshot

    def load(self) -> PolicySnapshot:
        """Load and validate every policy file; raise :class:`PolicyError` listing all problems."""
        with self._lock:
            seen = _fingerprint(self.directory)
            snapshot = load_directory(self.directory)
            self._snapshot = snapshot
            self._seen = seen
            return snapshot

    def reload_if_changed(self) -> bool:
        """Reload when file names, sizes or mtimes changed; True when a new snapshot is live.

        Invalid files keep the previous snapshot in place and log a warning once per
        change (problem locations and messages only: never key material).
        """
        if _fingerprint(self.directory) == self._seen:
            return False

        with self._lock:
            seen = _fingerprint(self.directory)
            if seen == self._seen:
                return False  # another thread reloaded it meanwhile
            self._seen = seen
            try:
                snapshot = load_directory(self.directory)
            except PolicyError as exc:
                _LOG.warning(
                    "policy reload rejected, keeping the previous policies: %s",
                    "; ".join(str(p) for p in exc.problems),
                )
                return False
            self._snapshot = snapshot
            _LOG.info("policies reloaded: %d tenant(s)", len(snapshot.tenants))
            return True
