"""OGBench's published dataset files, fetched over HTTP(S) with `pooch` into the data directory.

    sorl data download antmaze-large-navigate humanoidmaze-medium-navigate   # or any of OGBench's 85 datasets
    SORL_MIRRORS=https://huggingface.co/datasets/zhouzypaul/ogbench_datasets sorl train --task antmaze-large-navigate

What OGBench's own downloader (`ogbench.utils.download_datasets`) does not: other hosts, integrity, and nothing
half-written left behind.

- **Hosts.** `PUBLISHED_URL` (ogbench's `DATASET_URL`) by default; `--mirror URL` (repeatable) or `$SORL_MIRRORS`
  (comma-separated) replace it with other base URLs, tried in order for each file. A base URL serves
  `BASE/NAME.npz` and `BASE/NAME-val.npz`, ogbench's flat layout. The mirror OGBench's maintainers pointed to when
  their host was down (ogbench issue 49), `HF_MIRROR`, is a Hugging Face dataset repository with that same flat
  layout; its files are served under `/resolve/REVISION/`, so the address a browser shows
  (`.../ogbench_datasets` or `.../tree/main`) is rewritten to that (`normalize_base`).
- **Integrity.** Each file is fetched by pooch (requests, streamed, retried `RETRIES` times, restarting from the
  first byte: pooch has no resume, and neither has ogbench's host a published checksum to resume against) into a
  temporary file in `DIR/.downloads/NAME/`, moved to its final name only when the transfer is complete (the
  server's Content-Length, which urllib3 enforces on the stream and we compare with the file), the arrays are the
  environment's keys, dtypes and shapes, every zip member's CRC is good and no float is NaN or infinite
  (`envs.checks.check_full`), and, when the manifest already knows the file (it was downloaded or placed before and
  then deleted), its sha256 is the recorded one. Then the manifest records its size, sha256, source URL and
  `verified` stamp (`envs.manifest`); every later load compares them (`envs.datasets._check_dataset`). An
  interrupted or failed transfer leaves no file under a name that loads: its staging directory is removed (or, after
  a kill, on the next attempt, which starts over).
- **Sizes.** OGBench publishes neither sizes nor checksums for its files; the size checked is the one the server
  announces. The manifest's sha256 is the checksum from then on.

Supported: the 85 standard datasets of OGBench's `data_gen_scripts/commands.sh` (`PUBLISHED_DATASETS`: every
locomotion and manipulation dataset, state and visual, `-noisy` and powderworld included); those `envs.registry`
knows are checked against their environment, the others (visual locomotion, `-noisy`, powderworld, which no sorl
task uses) only for OGBench's common keys. Not supported: the 100M-transition datasets (`...-100m-v0`,
directories of shards; `LARGE_DATASETS`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from envs import checks, manifest
from envs.registry import ENVIRONMENTS, EnvSpec, resolve_env
from sorl.errors import SorlError, suggest

PUBLISHED_URL = "https://rail.eecs.berkeley.edu/datasets/ogbench"
"""ogbench's `DATASET_URL` (ogbench 1.2.2, `ogbench/utils.py`)."""
HF_MIRROR = "https://huggingface.co/datasets/zhouzypaul/ogbench_datasets"
"""The mirror OGBench's maintainers pointed to during their host's outage (github.com/seohongpark/ogbench issue 49):
the same file names at the top of a Hugging Face dataset repository."""
MIRRORS_ENV = "SORL_MIRRORS"
NO_DOWNLOAD_ENV = "SORL_NO_DOWNLOAD"
STAGING = ".downloads"
"""Under the data directory: one folder per dataset being fetched, removed when done."""
RETRIES = 2
"""Further attempts per host after a failed transfer (pooch waits 1 s, then 2 s)."""
TIMEOUT = (15.0, 60.0)
"""requests' (connect, read) timeouts in seconds."""
CHUNK = 1 << 20

_ON, _OFF = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}

# OGBench data_gen_scripts/commands.sh: the 85 datasets its README counts.
_LOCOMOTION = [
    *(f"pointmaze-{m}-{t}" for m in ("medium", "large", "giant", "teleport") for t in ("navigate", "stitch")),
    *(f"antmaze-{m}-{t}" for m in ("medium", "large", "giant", "teleport") for t in ("navigate", "stitch")),
    *(f"antmaze-{m}-explore" for m in ("medium", "large", "teleport")),
    *(f"humanoidmaze-{m}-{t}" for m in ("medium", "large", "giant") for t in ("navigate", "stitch")),
    *(f"antsoccer-{m}-{t}" for m in ("arena", "medium") for t in ("navigate", "stitch")),
]
_MANIPULATION = [
    *(f"{s}-{t}" for s in ("cube-single", "cube-double", "cube-triple", "cube-quadruple", "scene") for t in
      ("play", "noisy")),
    *(f"puzzle-{s}-{t}" for s in ("3x3", "4x4", "4x5", "4x6") for t in ("play", "noisy")),
]  # fmt: skip
PUBLISHED_DATASETS: tuple[str, ...] = tuple(
    f"{n}-v0"
    for n in [
        *_LOCOMOTION,
        *_MANIPULATION,
        *(f"visual-{n}" for n in _LOCOMOTION if not n.startswith(("pointmaze", "antsoccer"))),
        *(f"visual-{n}" for n in _MANIPULATION),
        *(f"powderworld-{d}-play" for d in ("easy", "medium", "hard")),
    ]
)
"""Every dataset OGBench publishes as a `NAME.npz` / `NAME-val.npz` pair."""
LARGE_DATASETS = (
    "humanoidmaze-giant-navigate-100m-v0", "cube-double-play-100m-v0", "cube-triple-play-100m-v0",
    "cube-quadruple-play-100m-v0", "cube-quadruple-noisy-100m-v0", "cube-octuple-play-100m-v0",
    "scene-play-100m-v0", "puzzle-3x3-play-100m-v0", "puzzle-4x4-play-100m-v0", "puzzle-4x5-play-100m-v0",
    "puzzle-4x6-play-100m-v0",
)  # fmt: skip
"""OGBench's README's 100M-transition datasets: directories of shards, not supported here."""
COMMON_KEYS = ("observations", "actions", "terminals")


@dataclass(frozen=True)
class Published:
    """A published dataset: its file stem and, when sorl has the environment, its `EnvSpec`."""

    name: str
    spec: EnvSpec | None

    def paths(self, directory: Path) -> tuple[Path, Path]:
        return directory / f"{self.name}.npz", directory / f"{self.name}-val.npz"


def resolve(name: str) -> Published:
    """Any spelling `envs.registry` accepts (environment, task or dataset), or one of `PUBLISHED_DATASETS` with or
    without its `-v0`."""
    key = name.strip().lower()
    stem = key if key.endswith("-v0") else f"{key}-v0"
    if stem in LARGE_DATASETS or "-100m" in key:
        raise SorlError(
            f"'{name}' is one of OGBench's 100M-transition datasets (a directory of shards), which sorl does not "
            f"download; fetch it by hand from {PUBLISHED_URL}/{stem.removesuffix('-v0')}-v0/ (see OGBench's README)"
        )
    try:
        spec = resolve_env(name)
    except SorlError:
        if stem in PUBLISHED_DATASETS:
            spec = ENVIRONMENTS.get(stem.removesuffix("-v0"))
            return Published(stem, spec)
        hint = suggest(key, [n.removesuffix("-v0") for n in PUBLISHED_DATASETS])
        raise SorlError(
            f"unknown task or dataset '{name}'{hint}; `sorl data download` takes a task, an environment or one of "
            "OGBench's 85 published datasets (e.g. antmaze-large-navigate, visual-antmaze-large-navigate-v0)"
        ) from None
    return Published(spec.dataset_name, spec)


# ---------------------------------------------------------------------------------------------- settings


def downloads_allowed(no_download: bool = False) -> bool:
    """False when `no_download` (the `--no-download` flag) or $SORL_NO_DOWNLOAD is set (1/true/yes/on)."""
    if no_download:
        return False
    value = os.environ.get(NO_DOWNLOAD_ENV, "").strip().lower()
    if value in _ON:
        return False
    if value not in _OFF:
        raise SorlError(
            f"${NO_DOWNLOAD_ENV}={os.environ[NO_DOWNLOAD_ENV]!r}: set it to 1 (no downloads) or 0, or unset it"
        )
    return True


_HF = re.compile(
    r"^(?P<repo>https?://(?:huggingface\.co|hf-mirror\.com)/datasets/[^/?#]+/[^/?#]+?)"
    r"(?:/(?:tree|blob|resolve)/(?P<rev>[^/?#]+)(?P<sub>/[^?#]*)?)?/?$"
)


def normalize_base(url: str, source: str = "--mirror") -> str:
    """A base URL without its trailing slash; a Hugging Face dataset repository's page (`.../datasets/OWNER/NAME`,
    `.../tree/REV[/DIR]`) becomes the address its files are served from (`.../resolve/REV[/DIR]`)."""
    base = url.strip()
    if not re.match(r"^https?://[^/\s]+", base) or any(c.isspace() for c in base):
        raise SorlError(
            f"{source} {url!r} is not an http(s) URL; give a base URL whose NAME.npz files sit directly under it, "
            f"e.g. {PUBLISHED_URL} or {HF_MIRROR}"
        )
    m = _HF.match(base)
    if m:
        sub = (m.group("sub") or "").rstrip("/")
        return f"{m.group('repo')}/resolve/{m.group('rev') or 'main'}{sub}"
    return base.rstrip("/")


def base_urls(mirrors: Sequence[str] = ()) -> list[str]:
    """The hosts to try in order: `mirrors` (`--mirror`) if any, else $SORL_MIRRORS, else the published host. Each
    entry may itself hold several comma-separated URLs."""
    source, given = "--mirror", [m for entry in mirrors for m in entry.split(",") if m.strip()]
    if not given and os.environ.get(MIRRORS_ENV, "").strip():
        source, given = f"${MIRRORS_ENV} entry", [m for m in os.environ[MIRRORS_ENV].split(",") if m.strip()]
    bases = [normalize_base(m, source) for m in given] or [PUBLISHED_URL]
    return list(dict.fromkeys(bases))


def _mirror_hint() -> str:
    return (
        f"or name another host with `sorl data download ... --mirror URL` or ${MIRRORS_ENV}=URL[,URL...] "
        f"(OGBench's maintainers point to {HF_MIRROR})"
    )


def manual_hint(paths: Sequence[Path]) -> str:
    names = " and ".join(p.name for p in paths)
    return f"put the published {names} in {paths[0].parent} by hand (from {PUBLISHED_URL}/), {_mirror_hint()}"


# ------------------------------------------------------------------------------------------------ errors


def _reason(e: BaseException) -> str:
    """One short phrase for a failed request."""
    import requests

    text = str(e)
    if isinstance(e, requests.HTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code} {e.response.reason or ''}".rstrip()
    if isinstance(e, requests.Timeout):
        return f"timed out (no answer within {TIMEOUT[0]:.0f} s to connect / {TIMEOUT[1]:.0f} s to read)"
    if isinstance(e, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return "the transfer was cut short (the connection closed before the announced size)"
    if isinstance(e, requests.ConnectionError):
        if "refused" in text.lower():
            return "connection refused"
        if any(w in text for w in ("NameResolution", "getaddrinfo", "Name or service not known", "nodename")):
            return "host not found (offline, or no DNS)"
        return "could not connect"
    return f"{type(e).__name__}: {text}"[:200]


class _HostFailed(Exception):
    """This host could not give us this file (the next host is tried)."""


# ------------------------------------------------------------------------------------------------ fetching


def _head(url: str) -> int | None:
    """The file's size as the host announces it (None when it does not say); _HostFailed when the host cannot
    serve it (unreachable, 404, ...). A host that does not answer HEAD requests is given the benefit of the doubt."""
    import requests

    try:
        r = requests.head(url, allow_redirects=True, timeout=TIMEOUT)
    except requests.RequestException as e:
        raise _HostFailed(_reason(e)) from None
    if r.status_code in (405, 501):
        return None
    if r.status_code >= 400:
        raise _HostFailed(f"HTTP {r.status_code} {r.reason or ''}".rstrip())
    if r.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None  # the announced length is of the encoded stream, not of the file
    size = r.headers.get("X-Linked-Size") or r.headers.get("Content-Length")  # Hugging Face: X-Linked-Size
    return int(size) if size and size.isdigit() else None


@contextlib.contextmanager
def _quiet_pooch():
    """pooch logs each download and retry to stderr; our own lines say what happens."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _get(url: str, staging: Path, name: str, progress: bool) -> Path:
    """The file at `url`, complete, in `staging/name` (pooch: a temporary file there, moved when the transfer ended
    well; retried `RETRIES` times). _HostFailed when it could not be had."""
    import pooch
    import requests

    fetcher = pooch.create(path=staging, base_url="", registry={name: None}, urls={name: url}, retry_if_failed=RETRIES)
    downloader = pooch.HTTPDownloader(progressbar=progress, chunk_size=CHUNK, timeout=TIMEOUT)
    try:
        with _quiet_pooch():
            return Path(fetcher.fetch(name, downloader=downloader))
    except requests.RequestException as e:
        raise _HostFailed(_reason(e)) from None


def _verify(pub: Published, path: Path, size: int | None, sha256: str | None) -> tuple[str, str | None]:
    """(sha256 of the file, its problem or None): the announced size, the format, the recorded checksum."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return "", f"has {actual} bytes, the host announced {size}"
    try:
        if pub.spec is not None:
            problems = checks.check_full(pub.spec, path)
        else:
            headers = checks.read_headers(path)
            missing = [k for k in COMMON_KEYS if k not in headers]
            problems = [f"missing key(s) {', '.join(missing)}"] if missing else []
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            if bad is not None:
                problems.append(f"member {bad} has a bad CRC")
    except Exception as e:  # noqa: BLE001 - any failure to read the zip means the bytes are not a dataset
        return "", f"is not a readable .npz ({type(e).__name__}: {e})"
    if problems:
        return "", "is not a valid dataset file: " + "; ".join(problems)
    digest = manifest.sha256_file(path)
    if sha256 is not None and digest != sha256:
        return digest, (
            f"has sha256 {digest[:12]}..., the manifest recorded {sha256[:12]}... when the file was first fetched "
            "(pass --force to accept the new bytes)"
        )
    return digest, None


@dataclass
class Plan:
    """Which of a dataset's files to fetch, and for each the hosts that answered for it, in order, with the size
    they announce (`locate`); `failures`: what the others said."""

    pub: Published
    directory: Path
    files: list[tuple[Path, str, list[tuple[str, int | None]]]]
    failures: dict[str, list[str]]


def _announce_transfer(
    pub: Published,
    directory: Path,
    todo: Sequence[tuple[Path, str, list[tuple[str, int | None]]]],
    announce: Callable[[str], None],
    why: str,
) -> None:
    """The transfer's one line (files, sizes, first host); SorlError before any byte is fetched when the announced
    sizes do not fit on the disk."""
    sizes = [hosts[0][1] for _, _, hosts in todo]
    total = " + ".join("size unknown" if s is None else manifest.human_size(s) for s in sizes)
    first = todo[0][2][0][0].rsplit("/", 1)[0]
    announce(f"{why}downloading {' and '.join(p.name for p, _, _ in todo)} ({total}) from {first}/ to {directory}")
    free = shutil.disk_usage(directory).free
    need = sum(s or 0 for s in sizes)
    if need > free:
        raise SorlError(
            f"{directory} has {manifest.human_size(free)} free, {pub.name} needs {manifest.human_size(need)}; "
            "free some space or pass --data-dir (or set $OGBENCH_DATA_DIR) to a larger disk"
        )


def _expected_sha256(entry: dict, force: bool) -> str | None:
    """The sha256 a re-fetched file must have: the manifest's, when it recorded a complete published or downloaded
    file, unless `force` accepts new bytes."""
    recorded = entry.get("provenance") in ("downloaded", "published") and entry.get("status") == "complete"
    return entry.get("sha256") if recorded and not force else None


def _fetch_file(
    plan: Plan,
    path: Path,
    split: str,
    hosts: list[tuple[str, int | None]],
    *,
    staging: Path,
    expected: str | None,
    failures: list[str],
    progress: bool,
) -> tuple[str, str, int] | None:
    """One file from the first of `hosts` whose copy passes `_verify`, moved into place and recorded in the manifest:
    (its URL, sha256, size), or None when no host gave a good copy (each one's reason appended to `failures`)."""
    pub, directory = plan.pub, plan.directory
    for url, size in hosts:
        try:
            staged = _get(url, staging, path.name, progress)
        except _HostFailed as e:
            failures.append(f"{url}: {e}")
            continue
        digest, problem = _verify(pub, staged, size, expected)
        if problem:
            failures.append(f"{url}: the file {problem}")
            staged.unlink(missing_ok=True)
            continue
        os.replace(staged, path)
        stamp = manifest.stamp(path)
        new = manifest.make_entry(
            path, provenance="downloaded", dataset=pub.name, split=split, sha256=digest, verified=stamp
        )
        new["source"] = url
        manifest.update(directory, {path.name: new})
        return url, digest, stamp["size"]
    return None


def locate(pub: Published, directory: Path, *, mirrors: Sequence[str] = (), force: bool = False) -> Plan:
    """Ask each host (HEAD) for the dataset's missing files (all of them with `force`): where each is and how big,
    before anything is written, so that an unreachable host or a missing file is one line that leaves no trace.
    Hosts that fail are dropped; SorlError when a file has none left."""
    train, val = pub.paths(directory)
    bases = base_urls(mirrors)
    plan = Plan(pub, directory, [], {})
    for path, split in ((train, "train"), (val, "val")):
        if not force and path.is_file():
            continue
        hosts, failed = [], plan.failures.setdefault(path.name, [])
        for base in bases:
            url = f"{base}/{path.name}"
            try:
                hosts.append((url, _head(url)))
            except _HostFailed as e:
                failed.append(f"{url}: {e}")
        if not hosts:
            raise SorlError(f"could not download {path.name}: {'; '.join(failed)}; {manual_hint([train, val])}")
        plan.files.append((path, split, hosts))
    return plan


def fetch(plan: Plan, *, force: bool = False, progress: bool = True, announce: Callable[[str], None] = print,
          why: str = "", each: bool = True) -> list[Path]:  # fmt: skip
    """Download the files `locate` found, trying their hosts in order. The caller has checked that the directory is
    writable and holds the dataset's lock. Announces the transfer in one line (and, with `each`, a line per file
    written). Returns the files written. SorlError (one line) when a file cannot be had from any host: nothing is
    left under a name that loads, and files already in place stay."""
    pub, directory = plan.pub, plan.directory
    todo = [(p, s, h) for p, s, h in plan.files if force or not p.is_file()]  # another process may have fetched it
    if not todo:
        return []
    known = manifest.entries(directory)
    staging = directory / STAGING / pub.name
    shutil.rmtree(staging, ignore_errors=True)  # what a killed attempt left: it starts over
    try:
        _announce_transfer(pub, directory, todo, announce, why)
        written = []
        for path, split, hosts in todo:
            expected = _expected_sha256(known.get(path.name) or {}, force)
            failures = plan.failures.setdefault(path.name, [])
            got = _fetch_file(
                plan, path, split, hosts, staging=staging, expected=expected, failures=failures, progress=progress
            )
            if got is None:
                kept = f" ({', '.join(p.name for p in written)} is in place)" if written else ""
                raise SorlError(
                    f"could not download {path.name}: {'; '.join(failures)}{kept}; nothing else was written; "
                    f"run the same command again to retry, or {manual_hint(pub.paths(directory))}"
                )
            url, digest, size = got
            if each:
                announce(f"wrote {path} ({manifest.human_size(size)}, sha256 {digest[:12]}..., from {url})")
            written.append(path)
        return written
    except OSError as e:
        raise SorlError(f"could not write {pub.name} to {directory}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            (directory / STAGING).rmdir()  # only when empty: another dataset may be downloading beside it
