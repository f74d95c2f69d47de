"""Saving structures as plain ``.npy`` arrays plus a JSON manifest (no pickle).

A saved structure is a folder holding ``manifest.json`` and one ``<name>.npy`` per array.
The manifest records the structure's kind, its format version, its parameters and the
SHA-256 of every array file, so that loading detects truncation, bit rot and files from an
incompatible version before any of the data is used. Writing goes to a temporary sibling
folder that is renamed into place, so an interrupted save never leaves a half-written index.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from llmds.errors import CorruptIndexError

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_arrays(
    path: str | os.PathLike,
    kind: str,
    version: int,
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
) -> Path:
    """Write ``arrays`` and ``meta`` under the folder ``path`` atomically.

    ``meta`` must be JSON-serialisable. An existing folder at ``path`` is replaced only after
    the new one has been written completely.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        checksums = {}
        for name, array in arrays.items():
            file = staging / f"{name}.npy"
            np.save(file, np.ascontiguousarray(array), allow_pickle=False)
            checksums[name] = _sha256(file)
        manifest = {"kind": kind, "version": version, "meta": meta, "arrays": checksums}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            if backup.exists():
                shutil.rmtree(backup)
            target.rename(backup)
            staging.rename(target)
            shutil.rmtree(backup)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_arrays(
    path: str | os.PathLike, kind: str, version: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a folder written by :func:`save_arrays`, verifying kind, version and checksums.

    Raises :class:`CorruptIndexError` naming the first problem found.
    """
    folder = Path(path)
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise CorruptIndexError(
            f"{folder} is not a saved {kind} index: {MANIFEST} is missing. "
            "Save the index again or point at the folder that holds manifest.json."
        )
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptIndexError(f"{manifest_file} is damaged ({exc}); save the index again.") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        raise CorruptIndexError(
            f"{folder} holds a {manifest.get('kind') if isinstance(manifest, dict) else '?'!r} "
            f"index, not a {kind!r} index."
        )
    if manifest.get("version") != version:
        raise CorruptIndexError(
            f"{folder} was saved in format version {manifest.get('version')}, this llmds reads "
            f"version {version}; rebuild and save the index again."
        )
    arrays = {}
    for name, expected in manifest.get("arrays", {}).items():
        file = folder / f"{name}.npy"
        if not file.is_file():
            raise CorruptIndexError(f"{folder}: array file {file.name} is missing; save the index again.")
        if _sha256(file) != expected:
            raise CorruptIndexError(
                f"{folder}: {file.name} does not match its checksum (damaged or edited); "
                "save the index again."
            )
        try:
            arrays[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CorruptIndexError(f"{folder}: {file.name} cannot be read ({exc}).") from exc
    return manifest.get("meta", {}), arrays
