"""The manifest of a synthetic set: ``OUT/manifest.jsonl``, the source of truth for what exists.

One JSON object per line. A *record* line (it has ``class_name``) describes one generated
image with everything needed to regenerate it, and where it was generated, to judge a
regeneration: the files of its batch in order (``batch``, whose length is the batch size) and
its ``batch_position``, and the environment (``generator_device``, ``device_name``, ``dtype``,
``cpu_capability``, ``threads``, ``versions``). A *status* line (``{"file": ..., "status": ...}``)
records a curation decision. Lines are only ever appended, each with a single write, so a crash
can at worst leave a torn last line, which readers skip. The latest line for a file wins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import UsageError

MANIFEST_NAME = "manifest.jsonl"
STATUSES = ("kept", "rejected")


def manifest_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / MANIFEST_NAME


def append_lines(out_dir: str | Path, entries: Iterable[dict]) -> None:
    """Append entries as JSON lines in one write, flushed to disk before returning."""
    payload = "".join(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n" for entry in entries)
    if not payload:
        return
    data = payload.encode("utf-8")
    # O_APPEND + one os.write: lines from concurrent shards never interleave.
    descriptor = os.open(manifest_path(out_dir), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(descriptor).st_size
        # A previous crash may have left a torn line without its newline: start on a fresh line.
        # Only the last byte is read, so appending stays cheap however long the manifest grows.
        if size and os.pread(descriptor, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_manifest(out_dir: str | Path) -> dict[str, dict]:
    """Records by file (relative path), in generation order, with the latest status applied.

    Lines that do not parse (a torn last line after a crash) are skipped, as are status lines
    for files that have no record.
    """
    path = manifest_path(out_dir)
    records: dict[str, dict] = {}
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(entry, dict) or "file" not in entry:
            continue
        if "class_name" in entry:
            records[entry["file"]] = {"status": "kept", **entry}
        elif entry["file"] in records and entry.get("status") in STATUSES:
            records[entry["file"]]["status"] = entry["status"]
    return records


ENVIRONMENT_FIELDS = ("generator_device", "device_name", "dtype", "cpu_capability", "threads")


def _environment(entry: dict) -> dict:
    """An entry's environment as flat fields: one per package version, and the batch size."""
    versions = {f"versions.{package}": version for package, version in entry.get("versions", {}).items()}
    batch = {"batch_size": len(entry["batch"])} if "batch" in entry else {}
    return {field: entry.get(field) for field in ENVIRONMENT_FIELDS} | versions | batch


def environment_differences(record: dict, now: dict) -> dict[str, tuple]:
    """The environment fields (and batch size) in which ``now`` differs from a record:
    ``{field: (recorded, now)}``, recorded ``None`` where the record was written before the
    manifest held that field (unknown, so possibly different)."""
    recorded, current = _environment(record), _environment(now)
    return {
        field: (recorded.get(field), value)
        for field, value in current.items()
        if recorded.get(field) != value
    }


def set_status(out_dir: str | Path, files: Iterable[str], status: str) -> None:
    """Mark images kept or rejected (curation). Files are never deleted."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    known = read_manifest(out_dir)
    files = list(files)
    unknown = [file for file in files if file not in known]
    if unknown:
        raise UsageError(f"not in the manifest of {out_dir}: {unknown[:5]}")
    append_lines(out_dir, ({"file": file, "status": status} for file in files))


def kept_images(out_dir: str | Path) -> list[tuple[Path, str]]:
    """(image path, class name) of every kept image whose file exists."""
    out_dir = Path(out_dir)
    return [
        (out_dir / record["file"], record["class_name"])
        for record in read_manifest(out_dir).values()
        if record["status"] == "kept" and (out_dir / record["file"]).is_file()
    ]
