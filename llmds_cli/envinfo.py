"""The machine and library versions a run was measured with (``env.json``, ``llmds env``)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from typing import Any

from llmds_cli import registry
from llmds_cli.results import short_commit

# Packages whose version changes what a benchmark measures.
_CORE_PACKAGES = ("llmds", "numpy", "numba", "typer", "rich", "matplotlib", "memray", "PyStemmer")
# Thread-count variables; peers are pinned to one thread and these are recorded to prove it.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "NUMBA_NUM_THREADS", "OPENBLAS_CORETYPE")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def peer_packages() -> list[str]:
    seen: list[str] = []
    for component in registry.COMPONENTS.values():
        for peer in component.peers:
            for package in peer.package.split():
                if package and package not in seen:
                    seen.append(package)
    return seen


def collect() -> dict[str, Any]:
    packages = {name: _version(name) for name in (*_CORE_PACKAGES, *peer_packages())}
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "commit": short_commit(),
        "packages": packages,
        "threads": {name: os.environ.get(name) for name in _THREAD_VARIABLES},
    }


def fingerprint(env: dict[str, Any]) -> str:
    """A short digest of an environment: equal fingerprints mean comparable timings."""
    text = json.dumps(env, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
