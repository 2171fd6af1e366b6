"""`manifest.json` beside the data: what each dataset file is, where it came from, and its checksum.

    {"version": 1,
     "files": {"cube-single-play-v0.npz": {
         "dataset": "cube-single-play-v0", "split": "train", "status": "complete",
         "provenance": "generated",            # or "downloaded" (then "source": its URL), or "published": a
                                               # file we found there and did not write
         "sha256": "...", "size": 123, "recorded": "2025-01-01T00:00:00+00:00",
         "ogbench_version": "1.2.2", "generator": {episodes, max_episode_steps, noise, seed, ...} | null,
         "verified": {"size": 123, "mtime_ns": ...}}}}

`verified` is the file's size and mtime when its sha256 last matched and its arrays were last found free of NaN
and infinity (when it was written, or when first loaded): a load whose stat still matches skips both checks
(`envs.datasets._check_dataset`). A file changed since has another stamp and is checked again.

A downloaded file (`envs.download`) is recorded when it is moved into place, after its transfer, format and (for
a re-fetch of a file the manifest knew) sha256 were checked: its size and sha256 are what later loads compare.

A file with `"status": "pending"` is being (or was, when interrupted) replaced by `sorl data generate`; it is not
trusted until the generator records it as complete. Every write is atomic (temporary file, fsync, os.replace)
and read-modify-writes hold an exclusive lock (`.manifest.lock`), so concurrent jobs sharing a data directory
do not lose each other's entries.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import tempfile
from pathlib import Path

from sorl.errors import SorlError
from sorl.locks import FileLock

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".manifest.lock"
VERSION = 1


def manifest_path(data_dir: Path) -> Path:
    return Path(data_dir) / MANIFEST_NAME


def ogbench_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ogbench")
    except PackageNotFoundError:
        return None


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def human_size(n: float) -> str:
    """A byte count for people: 1024-based units, one decimal (B whole)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_lock(path: Path) -> FileLock:
    """Exclusive advisory lock on `path` (created if needed), blocking: `with file_lock(p): ...`."""
    return FileLock(path)


def dataset_lock(data_dir: Path, dataset: str) -> FileLock:
    """The lock that serialises writing one dataset's files (generation or download) between processes."""
    return file_lock(Path(data_dir) / f".{dataset}.lock")


def read(data_dir: Path) -> dict:
    """The manifest ({'version', 'files'}); empty if there is none. A damaged manifest is a SorlError."""
    path = manifest_path(data_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {"version": VERSION, "files": {}}
    except OSError as e:
        raise SorlError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise ValueError("no 'files' table")
    except ValueError as e:
        raise SorlError(
            f"{path} is damaged ({e}); move it aside and run `sorl data verify` "
            "(files will be re-recorded, as 'published' since their origin is then unknown)"
        ) from None
    return data


def entries(data_dir: Path) -> dict[str, dict]:
    return read(data_dir)["files"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def mkstemp_public(directory: Path, prefix: str) -> tuple[int, str]:
    """`tempfile.mkstemp` in `directory`, but with the usual umask-derived mode (mkstemp makes files 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def _write(data_dir: Path, data: dict) -> None:
    path = manifest_path(data_dir)
    fd, tmp = mkstemp_public(Path(data_dir), ".manifest.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update(data_dir: Path, changes: dict[str, dict | None]) -> None:
    """Set (dict) or delete (None) entries by file name, atomically and under the lock."""
    data_dir = Path(data_dir)
    with file_lock(data_dir / LOCK_NAME):
        data = read(data_dir)
        for name, entry in changes.items():
            if entry is None:
                data["files"].pop(name, None)
            else:
                data["files"][name] = entry
        data["version"] = VERSION
        _write(data_dir, data)


def mark_pending(data_dir: Path, names: list[str], dataset: str) -> None:
    update(data_dir, {n: {"dataset": dataset, "status": "pending", "recorded": now()} for n in names})


def make_entry(
    path: Path,
    *,
    provenance: str,
    dataset: str,
    split: str,
    generator: dict | None = None,
    ogbench_version: str | None = None,
    verified: dict | None = None,
    sha256: str | None = None,
) -> dict:
    """An entry for `path` (sha256 taken now unless given); `verified`: its stamp (`stamp`) if its arrays were
    checked."""
    path = Path(path)
    entry = {
        "dataset": dataset,
        "split": split,
        "status": "complete",
        "provenance": provenance,
        "sha256": sha256 or sha256_file(path),
        "size": path.stat().st_size,
        "recorded": now(),
        "ogbench_version": ogbench_version,
        "generator": generator,
    }
    if verified is not None:
        entry["verified"] = verified
    return entry


def stamp(path: Path) -> dict:
    """{'size', 'mtime_ns'} of a file: what `verified` records."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def record_verified(data_dir: Path, verified: dict[str, tuple[str, dict]], new: dict[str, dict]) -> None:
    """Under the lock: set `verified` stamps (file name -> (the sha256 that matched, stamp)) on entries that still
    record that sha256, and add `new` entries for names still unknown (another process's entry wins)."""
    data_dir = Path(data_dir)
    with file_lock(data_dir / LOCK_NAME):
        data = read(data_dir)
        files = data["files"]
        changed = False
        for name, (sha, st) in verified.items():
            entry = files.get(name)
            if entry is not None and entry.get("sha256") == sha and entry.get("verified") != st:
                entry["verified"] = st
                changed = True
        for name, entry in new.items():
            if name not in files:
                files[name] = entry
                changed = True
        if changed:
            data["version"] = VERSION
            _write(data_dir, data)


def record_published(data_dir: Path, found: dict[str, tuple[str, str]]) -> dict[str, dict]:
    """Record files present in the data directory that the manifest does not know: `found` maps file name ->
    (dataset, split). They were not written by us, so they are 'published' (sha256 taken now). Best effort: a
    read-only data directory just goes unrecorded. Returns the new entries."""
    data_dir = Path(data_dir)
    known = entries(data_dir)
    new = {}
    for name, (dataset, split) in found.items():
        path = data_dir / name
        if name in known or not path.is_file():
            continue
        new[name] = make_entry(path, provenance="published", dataset=dataset, split=split, ogbench_version=None)
    if new:
        with contextlib.suppress(OSError), file_lock(data_dir / LOCK_NAME):
            current = read(data_dir)
            # Another process may have recorded (or started generating) one of them meanwhile: keep theirs.
            fresh = {k: v for k, v in new.items() if k not in current["files"]}
            current["files"].update(fresh)
            _write(data_dir, current)
    return new
