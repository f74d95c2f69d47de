"""Dataset manifests, downloads with checksums, and loaders for every input format.

Each dataset has one manifest ``datasets/<name>.json`` (source URL, per-file SHA-256, format,
licence, citation). A dataset's files are looked for, in order: ``--data-dir`` (a folder that
already holds them, such as a shared copy), then the download cache
(``$LLMDS_DATA_DIR`` or ``datasets/cache/<name>/``). Nothing is downloaded implicitly:
``llmds datasets fetch NAME`` does that, and a missing dataset is an error that says how to get it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from llmds.errors import DatasetError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DOWNLOAD_TIMEOUT_S = 15


def manifests_dir() -> Path:
    return Path(os.environ.get("LLMDS_MANIFESTS_DIR") or PROJECT_ROOT / "datasets")


def cache_dir() -> Path:
    return Path(os.environ.get("LLMDS_DATA_DIR") or PROJECT_ROOT / "datasets" / "cache")


@dataclass(frozen=True)
class Manifest:
    name: str
    kind: str
    title: str
    description: str
    format: str
    licence: str
    citation: str
    url: str = ""
    archive: str = ""
    archive_root: str = ""
    files: dict[str, str] = field(default_factory=dict)
    optional_files: dict[str, str] = field(default_factory=dict)
    generator: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", {}, None)}


def manifests() -> dict[str, Manifest]:
    folder = manifests_dir()
    if not folder.is_dir():
        raise DatasetError(
            f"dataset manifests not found at {folder}; install llmds from its source tree "
            "(pip install -e .) or set LLMDS_MANIFESTS_DIR."
        )
    found = {}
    for file in sorted(folder.glob("*.json")):
        try:
            data = json.loads(file.read_text())
            found[data["name"]] = Manifest(**data)
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"dataset manifest {file} is malformed: {exc}") from exc
    return found


def manifest(name: str) -> Manifest:
    known = manifests()
    if name not in known:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(known)}.")
    return known[name]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _has_files(folder: Path, entry: Manifest) -> bool:
    return all((folder / rel).is_file() for rel in entry.files)


def locate(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds dataset ``name``'s files, or a :class:`DatasetError` saying how to get it."""
    entry = manifest(name)
    if entry.synthetic:
        raise DatasetError(f"{name} is generated, it has no files.")
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        for candidate in (folder, folder / name, folder / entry.archive_root if entry.archive_root else None,
                          folder / "traces" if entry.kind == "trace" else None):
            if candidate is not None and candidate.is_dir() and _has_files(candidate, entry):
                return candidate
        missing = [rel for rel in entry.files if not (folder / rel).is_file()]
        raise DatasetError(
            f"--data-dir {folder} does not hold dataset {name!r}: missing {', '.join(missing)}. "
            f"Point --data-dir at the folder with {', '.join(entry.files)}, "
            f"or run `llmds datasets fetch {name}`."
        )
    cached = cache_dir() / name
    if _has_files(cached, entry):
        return cached
    raise DatasetError(
        f"dataset {name!r} is not available locally. Run `llmds datasets fetch {name}` to download "
        f"it, or pass --data-dir PATH pointing at a folder that holds {', '.join(entry.files)}."
    )


def verify(name: str, folder: Path) -> dict[str, str]:
    """Compare each file's SHA-256 with the manifest; returns {file: 'ok' | 'mismatch' | 'missing'}."""
    entry = manifest(name)
    status = {}
    for rel, expected in {**entry.files, **entry.optional_files}.items():
        path = folder / rel
        if not path.is_file():
            status[rel] = "missing" if rel in entry.files else "absent (optional)"
        else:
            status[rel] = "ok" if sha256_file(path) == expected else "mismatch"
    return status


def fetch(name: str, progress: Callable[[int, int | None], None] | None = None, force: bool = False) -> Path:
    """Download dataset ``name`` into the cache, verify every file's checksum, return its folder.

    The download goes to a temporary folder that is renamed into place only after every
    checksum matched, so a failed or interrupted fetch never leaves a half-filled cache.
    """
    entry = manifest(name)
    if entry.synthetic:
        raise DatasetError(f"{name} is generated on the fly; there is nothing to fetch.")
    target = cache_dir() / name
    if _has_files(target, entry) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        download = staging / ("archive.zip" if entry.archive == "zip" else next(iter(entry.files)))
        _download(entry.url, download, progress, name)
        if entry.archive == "zip":
            with zipfile.ZipFile(download) as archive:
                archive.extractall(staging / "unpacked")
            root = staging / "unpacked" / entry.archive_root
            folder = staging / "data"
            shutil.move(str(root), folder)
        else:
            folder = staging / "data"
            folder.mkdir()
            shutil.move(str(download), folder / download.name)
        bad = {rel: s for rel, s in verify(name, folder).items() if s in ("mismatch", "missing")}
        if bad:
            raise DatasetError(
                f"downloaded {name} does not match its manifest ({bad}); the source may have changed. "
                f"Nothing was cached. Use a verified local copy with --data-dir."
            )
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _download(url: str, path: Path, progress: Callable[[int, int | None], None] | None, name: str) -> None:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(path, "wb") as out:
            total = response.length
            done = 0
            while chunk := response.read(1 << 16):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DatasetError(
            f"could not download {url} ({reason}). If this machine is offline, use a local copy: "
            "pass --data-dir PATH to the command (for example ../shared/data/scifact), or copy the "
            f"files into {cache_dir() / name}/."
        ) from None


# ---------------------------------------------------------------------------------------------
# Loaders


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a malformed line names its number."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: malformed JSON line ({exc.msg}); fix or remove the line.") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}.")
            yield number, obj


@dataclass
class BeirDataset:
    """A BEIR retrieval dataset: documents, queries and graded relevance judgements per split."""

    doc_ids: list[str]
    doc_texts: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, float]]]  # split -> query id -> doc id -> grade
    folder: Path | None = None

    def split_queries(self, split: str) -> tuple[list[str], list[str]]:
        """Ids and texts of the queries judged in ``split``, in qrels order."""
        if split not in self.qrels:
            raise DatasetError(f"no relevance judgements for split {split!r}; available: {', '.join(self.qrels) or 'none'}.")
        ids = [q for q in self.qrels[split] if q in self.queries]
        return ids, [self.queries[q] for q in ids]


def load_beir(folder: str | os.PathLike) -> BeirDataset:
    folder = Path(folder)
    corpus = folder / "corpus.jsonl"
    if not corpus.is_file():
        raise DatasetError(f"{folder} is not a BEIR folder: corpus.jsonl is missing.")
    doc_ids: list[str] = []
    doc_texts: list[str] = []
    seen: dict[str, int] = {}
    for number, obj in _jsonl(corpus):
        if "_id" not in obj:
            raise DatasetError(f"{corpus}:{number}: document without an _id.")
        doc_id = str(obj["_id"])
        if doc_id in seen:
            raise DatasetError(f"{corpus}:{number}: duplicate document id {doc_id!r} (first on line {seen[doc_id]}).")
        seen[doc_id] = number
        doc_ids.append(doc_id)
        # BEIR convention: the indexed text is title and body joined by a space
        doc_texts.append(f"{obj.get('title') or ''} {obj.get('text') or ''}".strip())
    if not doc_ids:
        raise DatasetError(f"{corpus} holds no documents; an index needs at least one.")
    queries = {}
    queries_file = folder / "queries.jsonl"
    if queries_file.is_file():
        for number, obj in _jsonl(queries_file):
            if "_id" not in obj or "text" not in obj:
                raise DatasetError(f"{queries_file}:{number}: a query needs _id and text.")
            queries[str(obj["_id"])] = str(obj["text"])
    qrels = {}
    for tsv in sorted((folder / "qrels").glob("*.tsv")):
        qrels[tsv.stem] = load_qrels(tsv)
    return BeirDataset(doc_ids, doc_texts, queries, qrels, folder)


def load_qrels(path: Path) -> dict[str, dict[str, float]]:
    judgements: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.rstrip("\n").split("\t")
            if number == 1 and parts[0] == "query-id":
                continue
            if not line.strip():
                continue
            if len(parts) != 3:
                raise DatasetError(f"{path}:{number}: expected 3 tab-separated fields (query-id, corpus-id, score).")
            try:
                grade = float(parts[2])
            except ValueError:
                raise DatasetError(f"{path}:{number}: score {parts[2]!r} is not a number.") from None
            judgements.setdefault(parts[0], {})[parts[1]] = grade
    return judgements


@dataclass
class RequestTrace:
    """Requests of a serving trace, ordered by arrival.

    ``arrival_s`` is seconds since the first request (None for length-only traces),
    ``prompt_tokens`` and ``output_tokens`` are lengths, ``block_hashes`` (Mooncake only) the
    ids of the request's 512-token prefix blocks.
    """

    name: str
    arrival_s: np.ndarray | None
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    block_hashes: list[list[int]] | None = None
    hash_block_tokens: int | None = None

    def __len__(self) -> int:
        return len(self.prompt_tokens)


def _non_negative_int(value: Any, path: Path, number: int, column: str) -> int:
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}:{number}: {column} {value!r} is not an integer.") from None
    if as_int < 0:
        raise DatasetError(f"{path}:{number}: {column} is negative ({as_int}); lengths must be >= 0.")
    return as_int


def load_azure_trace(path: str | os.PathLike) -> RequestTrace:
    """Azure LLM inference trace CSV: TIMESTAMP, ContextTokens, GeneratedTokens."""
    path = Path(path)
    arrivals, prompts, outputs = [], [], []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if not reader.fieldnames or not needed.issubset(reader.fieldnames):
            raise DatasetError(f"{path}: expected columns {', '.join(sorted(needed))}, found {reader.fieldnames}.")
        for number, rec in enumerate(reader, 2):
            try:
                stamp = datetime.fromisoformat(rec["TIMESTAMP"][:26])
            except (TypeError, ValueError):
                raise DatasetError(f"{path}:{number}: TIMESTAMP {rec['TIMESTAMP']!r} is not a date-time.") from None
            arrivals.append(stamp.timestamp())
            prompts.append(_non_negative_int(rec["ContextTokens"], path, number, "ContextTokens"))
            outputs.append(_non_negative_int(rec["GeneratedTokens"], path, number, "GeneratedTokens"))
    if not prompts:
        raise DatasetError(f"{path} holds no requests.")
    arrival = np.asarray(arrivals, dtype=np.float64)
    if np.any(np.diff(arrival) < 0):
        first = int(np.argmax(np.diff(arrival) < 0)) + 3
        raise DatasetError(f"{path}:{first}: timestamps are not sorted; sort the trace by TIMESTAMP.")
    return RequestTrace(path.stem, arrival - arrival[0], np.asarray(prompts, np.int64), np.asarray(outputs, np.int64))


def load_mooncake_trace(path: str | os.PathLike) -> RequestTrace:
    """Mooncake JSONL: timestamp (ms), input_length, output_length, hash_ids (512-token blocks)."""
    path = Path(path)
    arrivals, prompts, outputs, hashes = [], [], [], []
    for number, obj in _jsonl(path):
        for key in ("timestamp", "input_length", "output_length", "hash_ids"):
            if key not in obj:
                raise DatasetError(f"{path}:{number}: the request has no {key!r} field.")
        ids = obj["hash_ids"]
        if not isinstance(ids, list) or not all(isinstance(h, int) for h in ids):
            raise DatasetError(f"{path}:{number}: hash_ids must be a list of integers.")
        arrivals.append(float(obj["timestamp"]) / 1000.0)
        prompts.append(_non_negative_int(obj["input_length"], path, number, "input_length"))
        outputs.append(_non_negative_int(obj["output_length"], path, number, "output_length"))
        hashes.append(ids)
    if not prompts:
        raise DatasetError(f"{path} holds no requests.")
    arrival = np.asarray(arrivals)
    return RequestTrace(path.stem, arrival - arrival[0], np.asarray(prompts, np.int64),
                        np.asarray(outputs, np.int64), hashes, hash_block_tokens=512)


def load_sharegpt_lengths(path: str | os.PathLike) -> RequestTrace:
    """ShareGPT length statistics CSV: num_prefill_tokens, num_decode_tokens (no arrival times)."""
    path = Path(path)
    prompts, outputs = [], []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {"num_prefill_tokens", "num_decode_tokens"}
        if not reader.fieldnames or not needed.issubset(reader.fieldnames):
            raise DatasetError(f"{path}: expected columns {', '.join(sorted(needed))}, found {reader.fieldnames}.")
        for number, rec in enumerate(reader, 2):
            prompts.append(_non_negative_int(rec["num_prefill_tokens"], path, number, "num_prefill_tokens"))
            outputs.append(_non_negative_int(rec["num_decode_tokens"], path, number, "num_decode_tokens"))
    if not prompts:
        raise DatasetError(f"{path} holds no requests.")
    return RequestTrace(path.stem, None, np.asarray(prompts, np.int64), np.asarray(outputs, np.int64))


TRACE_LOADERS = {
    "azure-conv": load_azure_trace,
    "azure-code": load_azure_trace,
    "mooncake-conversation": load_mooncake_trace,
    "sharegpt-lengths": load_sharegpt_lengths,
}


def load_trace(name: str, data_dir: str | os.PathLike | None = None) -> RequestTrace:
    folder = locate(name, data_dir)
    return TRACE_LOADERS[name](folder / next(iter(manifest(name).files)))


def load_vectors(path: str | os.PathLike, key: str = "train") -> np.ndarray:
    """Vectors from ``.npy``, ``.fvecs`` or an ann-benchmarks ``.hdf5`` file (``key`` = dataset in it)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"vector file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            vectors = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DatasetError(f"{path} is not a plain numpy array file ({exc}).") from None
    elif suffix == ".fvecs":
        raw = np.fromfile(path, dtype=np.int32)
        if raw.size == 0:
            raise DatasetError(f"{path} is empty.")
        dim = int(raw[0])
        if dim <= 0 or raw.size % (dim + 1):
            raise DatasetError(f"{path} is not a valid .fvecs file (dimension {dim}, {raw.size} words).")
        vectors = raw.reshape(-1, dim + 1)[:, 1:].view(np.float32)
    elif suffix in (".hdf5", ".h5"):
        try:
            import h5py
        except ImportError:
            raise DatasetError("reading ann-benchmarks .hdf5 files needs h5py: pip install 'llmds[hdf5]'.") from None
        with h5py.File(path, "r") as handle:
            if key not in handle:
                raise DatasetError(f"{path} has no dataset {key!r}; it has {', '.join(handle)}.")
            vectors = np.asarray(handle[key])
    else:
        raise DatasetError(f"{path}: unknown vector format {suffix!r}; use .npy, .fvecs or .hdf5.")
    if vectors.ndim != 2:
        raise DatasetError(f"{path}: expected a 2-D array of vectors, got shape {vectors.shape}.")
    return np.ascontiguousarray(vectors, dtype=np.float32)
