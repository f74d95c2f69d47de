"""Run folders: where every measurement lands, written so that nothing is ever half-written.

Layout (DESIGN.md): ``results/<component>/<run-id>/`` with ``results.json`` (schema version,
command line, parameters, dataset and checksum, seed, summary), ``results.csv`` (tidy rows),
``raw.jsonl`` (the raw records, one configuration's worth appended at a time), ``context.json``
(the ground truth ``summarize`` needs), ``env.json`` (this machine and every worker that measured),
``sweep.json`` (what the sweep was, for ``--resume``) and the charts. ``results.json`` is
written last: a folder without it is an interrupted run, and ``LATEST`` only ever names
complete runs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from llmds.errors import DatasetError

SCHEMA_VERSION = 1
RESULTS = "results.json"
RAW = "raw.jsonl"
CONTEXT = "context.json"
ENV = "env.json"
SWEEP = "sweep.json"
CSV = "results.csv"
CSV_FIELDS = ("impl", "config", "op", "metric", "value", "unit")


def results_root(explicit: str | os.PathLike | None = None) -> Path:
    """``--results-dir``, else ``$LLMDS_RESULTS_DIR``, else ``./results``."""
    return Path(explicit or os.environ.get("LLMDS_RESULTS_DIR") or "results")


def short_commit() -> str:
    """The checked-out commit of the llmds source tree, or ``nogit`` outside a checkout."""
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=7", "HEAD"], cwd=source, capture_output=True,
            text=True, timeout=5, check=True,
        )
        return out.stdout.strip() or "nogit"
    except (OSError, subprocess.SubprocessError):
        return "nogit"


def new_run_id(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}_{short_commit()}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary sibling and rename, so readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays appear in records; store them as plain JSON numbers and lists
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a run folder")


def rows_to_csv(rows: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


def resolve_run_path(path: str | os.PathLike) -> Path:
    """A run folder, its component folder (→ the LATEST run) or a LATEST file (→ that run)."""
    folder = Path(path)
    if folder.is_file() and folder.name == "LATEST":
        return folder.parent / folder.read_text().strip()
    if (folder / "LATEST").is_file():
        return folder / (folder / "LATEST").read_text().strip()
    return folder


@dataclass
class RunFolder:
    path: Path

    @property
    def component(self) -> str:
        return self.path.parent.name

    @classmethod
    def create(cls, component: str, root: str | os.PathLike | None = None) -> "RunFolder":
        base = results_root(root) / component
        base.mkdir(parents=True, exist_ok=True)
        run_id = new_run_id()
        path = base / run_id
        suffix = 1
        while path.exists():  # two runs in the same second
            suffix += 1
            path = base / f"{run_id}-{suffix}"
        path.mkdir()
        return cls(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunFolder":
        folder = resolve_run_path(path)
        if folder.is_file():
            raise DatasetError(f"{folder} is a file; give a run folder (`ls results/<component>/` lists runs).")
        if not folder.is_dir():
            raise DatasetError(f"run folder {folder} does not exist; `ls results/<component>/` lists runs.")
        if not (folder / RAW).is_file():
            raise DatasetError(f"{folder} is not a run folder: {RAW} is missing.")
        return cls(folder)

    def append_records(self, records: list[dict[str, Any]]) -> None:
        """Append one configuration's records. Each line is complete JSON, flushed at once."""
        lines = "".join(json.dumps(r, default=_json_default) + "\n" for r in records)
        with open(self.path / RAW, "a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def records(self, *, cut_last_line_ok: bool = False) -> list[dict[str, Any]]:
        """The raw records, in the order they were written.

        Only the last line can be cut short (a crash during an append). Reading a run's results
        treats that as an error; ``--resume`` (``cut_last_line_ok``) drops it, as that
        configuration runs again. A broken line anywhere else means the file was damaged.
        """
        raw = self.path / RAW
        lines = raw.read_text(encoding="utf-8").splitlines()
        out = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines) and cut_last_line_ok:
                    continue
                damage = "interrupted write?" if number == len(lines) else "the file was damaged; start a new run"
                raise DatasetError(f"{raw}:{number} is not valid JSON ({damage}).") from None
        return out

    def keep_finished(self) -> set[str]:
        """Prepare an interrupted or partly failed run for ``--resume``: keep the records of the
        configurations that finished (their ``op="done"`` record says ``ok``) and the records that
        belong to no configuration (parity checks); drop the rest, so that configurations that
        were cut short or failed run again without leaving duplicates. Returns the finished ids.
        """
        records = self.records(cut_last_line_ok=True)
        finished = {r["config"] for r in records if r.get("op") == "done" and r.get("status") == "ok"}
        kept = [r for r in records if "config" not in r or r["config"] in finished]
        atomic_write_text(self.path / RAW, "".join(json.dumps(r, default=_json_default) + "\n" for r in kept))
        return finished

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def read_json(self, name: str) -> Any:
        file = self.path / name
        if not file.is_file():
            raise DatasetError(f"{file} is missing: the run was interrupted before it finished.")
        return json.loads(file.read_text())

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path / CSV, rows_to_csv(rows))

    @property
    def complete(self) -> bool:
        return (self.path / RESULTS).is_file()

    def mark_latest(self) -> None:
        """Name this run in LATEST, unless LATEST names a newer complete run (a resumed old run
        finishes after it); run ids start with their UTC start time, so they sort by age."""
        latest = self.path.parent / "LATEST"
        current = latest.read_text().strip() if latest.is_file() else ""
        if current > self.path.name and (self.path.parent / current / "results.json").is_file():
            return
        atomic_write_text(latest, self.path.name + "\n")


def summary_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pivot tidy rows into {config: {metric: value}} for results.json."""
    table: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = table.setdefault(row["config"], {"impl": row["impl"]})
        entry[row["metric"]] = row["value"]
    return table
