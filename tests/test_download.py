"""Downloading OGBench's published datasets (envs/download.py), against a local HTTP server only.

The server (`http.server` on 127.0.0.1, a random port, stopped by the fixture) serves small synthetic datasets in the
published layout (`BASE/NAME.npz`, `BASE/NAME-val.npz`), with antmaze-large-navigate's keys, dtypes and shapes. It
can cut a file short (the announced Content-Length, then half the bytes and a closed connection) or serve corrupted
bytes. An unreachable host is a port on 127.0.0.1 that nothing listens on.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from refusals import assert_refused

from cli import main as cli
from envs import checks, datasets, download, manifest
from envs.registry import resolve_env
from sorl.errors import SorlError

ENV = "antmaze-large-navigate"
TASK = f"{ENV}-singletask-task1-v0"
SPEC = resolve_env(ENV)
NAME = SPEC.dataset_name
TRAIN, VAL = f"{NAME}.npz", f"{NAME}-val.npz"


def synthetic(path: Path, episodes: int, steps: int = 50, seed: int = 0) -> bytes:
    """An .npz in the published layout of antmaze-large-navigate (random contents), as OGBench writes them
    (`np.savez_compressed`); returns its bytes."""
    rng = np.random.default_rng(seed)
    rows = episodes * steps
    arrays = {}
    for key, (kinds, shape) in checks.expected_layout(SPEC).items():
        if key == "terminals":
            arrays[key] = np.zeros(rows, bool)
            arrays[key][steps - 1 :: steps] = True
        elif "f" in kinds:
            arrays[key] = rng.uniform(-1, 1, (rows, *shape)).astype(np.float32)
        else:
            arrays[key] = np.zeros((rows, *shape), np.int64)
    np.savez_compressed(path, **arrays)
    return path.read_bytes()


class Server:
    """What the local server serves: path -> bytes; `cut`: path -> how many of its next GETs are sent half and then
    closed; `log`: the requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.log: list[tuple[str, str]] = []
        self.port = 0

    def base(self, prefix: str = "/ogbench") -> str:
        return f"http://127.0.0.1:{self.port}{prefix}"

    def gets(self, name: str) -> int:
        return sum(1 for method, path in self.log if method == "GET" and path.endswith("/" + name))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The synthetic train/val files' bytes."""
    d = tmp_path_factory.mktemp("published")
    return {TRAIN: synthetic(d / TRAIN, 3), VAL: synthetic(d / VAL, 1, seed=1)}


@pytest.fixture
def server(published):
    state = Server()
    for name, data in published.items():
        state.files[f"/ogbench/{name}"] = data

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.serve(body=False)

        def do_GET(self):
            self.serve(body=True)

        def serve(self, body: bool) -> None:
            state.log.append((self.command, self.path))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if body:
                cut = state.cut.get(self.path, 0) > 0
                if cut:
                    state.cut[self.path] -= 1
                self.wfile.write(data[: len(data) // 2] if cut else data)
                self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 that nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _downloads_on(monkeypatch):
    """Downloads on (tests/conftest.py turns them off everywhere else), bounded in time, no retry pauses."""
    monkeypatch.delenv(download.NO_DOWNLOAD_ENV, raising=False)
    monkeypatch.delenv(download.MIRRORS_ENV, raising=False)
    monkeypatch.setattr(download, "TIMEOUT", (2.0, 5.0))
    monkeypatch.setattr(download, "RETRIES", 0)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(d: Path) -> list[str]:
    """Files a download could have left half-written: anything but the manifest and lock files."""
    keep = {"manifest.json"}
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name not in keep and
                  not p.name.endswith(".lock"))  # fmt: skip


# ------------------------------------------------------------------------------------------- the happy path


def test_training_downloads_verifies_and_trains(server, published, tmp_path, capsys, monkeypatch):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    monkeypatch.setenv(download.MIRRORS_ENV, server.base())
    code, out, err = run(
        capsys, "train", "--task", TASK, "--agent", "bc", "--data-dir", str(data), "--run-dir", str(run_dir),
        "--steps", "20", "--log-interval", "10", "--eval-interval", "20", "--eval-episodes", "1", "--eval-K", "1",
        "--eval-workers", "1", "--eval-max-episode-steps", "5", "--no-progress",
        "--agent.actor_layer_size=16", "--agent.actor_num_layers=2", "--agent.batch_size=16",
    )  # fmt: skip
    assert code == 0, err
    line = next(line for line in out.splitlines() if "downloading" in line)
    assert f"{NAME} is missing and cannot be generated here" in line and "SORL_NO_DOWNLOAD=1" in line
    assert f"{TRAIN} and {VAL} (" in line and "KB" in line and server.base() in line  # the sizes, the host
    for name, data_bytes in published.items():
        assert (data / name).read_bytes() == data_bytes
        entry = manifest.entries(data)[name]
        assert entry["provenance"] == "downloaded" and entry["source"] == f"{server.base()}/{name}"
        assert entry["size"] == len(data_bytes) and entry["status"] == "complete"
        assert entry["sha256"] == manifest.sha256_file(data / name)
        assert entry["verified"] == manifest.stamp(data / name)  # checked at download: the first load skips it
    assert not (data / download.STAGING).exists()
    assert json.loads((run_dir / "results.json").read_text())["status"] == "complete"
    # Present now: nothing is fetched again, by training or by `sorl data download`.
    gets = len(server.log)
    datasets.ensure_dataset(TASK, data)
    code, out, _ = run(capsys, "data", "download", ENV, "--data-dir", str(data), "--mirror", server.base())
    assert code == 0 and "already in" in out and len(server.log) == gets


def test_download_command_writes_both_files_and_they_load(server, published, tmp_path, capsys):
    data = tmp_path / "data"
    code, out, err = run(capsys, "data", "download", TASK, "--data-dir", str(data), "--mirror", server.base(),
                         "--no-progress")  # fmt: skip
    assert code == 0, err
    assert sum(line.startswith("wrote ") for line in out.splitlines()) == 2
    _, train, val = datasets.load_task(TASK, data)
    assert len(train["observations"]) == 3 * 49 and len(val["observations"]) == 49
    code, out, _ = run(capsys, "data", "verify", ENV, "--data-dir", str(data))
    assert code == 0 and "downloaded" in out
    # --force fetches both again (the same bytes: the manifest keeps the same checksums)
    before = manifest.entries(data)[TRAIN]["sha256"]
    code, out, _ = run(capsys, "data", "download", ENV, "--data-dir", str(data), "--mirror", server.base(),
                       "--force", "--no-progress")  # fmt: skip
    assert code == 0 and server.gets(TRAIN) == 2 and manifest.entries(data)[TRAIN]["sha256"] == before


# ---------------------------------------------------------------------------------------------- failures


def test_interrupted_transfer_leaves_nothing_and_the_rerun_completes(server, published, tmp_path, capsys):
    data = tmp_path / "data"
    server.cut[f"/ogbench/{VAL}"] = 1
    argv = ["data", "download", ENV, "--data-dir", str(data), "--mirror", server.base(), "--no-progress"]
    line = assert_refused(tmp_path, capsys, argv, f"could not download {VAL}", creates_nothing=False)
    assert f"{server.base()}/{VAL}: the transfer was cut short" in line and "run the same command again" in line
    # The complete, verified train file is in place; the cut one left nothing under any name.
    assert leftovers(data) == [TRAIN] and not (data / download.STAGING).exists()
    with pytest.raises(SorlError, match=f"{VAL} is missing"):  # the training path with downloads off says so
        datasets.ensure_dataset(TASK, data, download=False)
    # A kill mid-transfer leaves pooch's temporary file in the staging folder: the next attempt starts over.
    stale = data / download.STAGING / NAME / "tmpkilled"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(published[VAL][:100])
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert server.gets(TRAIN) == 1 and server.gets(VAL) == 2  # only the missing file is fetched again
    assert (data / VAL).read_bytes() == published[VAL] and not (data / download.STAGING).exists()
    datasets.ensure_dataset(TASK, data)


def test_a_cut_transfer_is_retried_within_the_call(server, published, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download, "RETRIES", 1)
    data = tmp_path / "data"
    server.cut[f"/ogbench/{TRAIN}"] = 1  # the first GET is cut; pooch's retry (1 s later) gets the whole file
    code, _, err = run(capsys, "data", "download", ENV, "--data-dir", str(data), "--mirror", server.base(),
                       "--no-progress")  # fmt: skip
    assert code == 0, err
    assert server.gets(TRAIN) == 2 and (data / TRAIN).read_bytes() == published[TRAIN]


def test_corrupted_file_is_rejected_and_a_corrupted_copy_is_refetched(server, published, tmp_path, capsys):
    data = tmp_path / "data"
    bad = bytearray(published[TRAIN])
    bad[len(bad) // 2] ^= 0xFF  # one flipped byte inside a compressed member: its CRC fails
    server.files[f"/ogbench/{TRAIN}"] = bytes(bad)
    argv = ["data", "download", ENV, "--data-dir", str(data), "--mirror", server.base(), "--no-progress"]
    line = assert_refused(tmp_path, capsys, argv, f"could not download {TRAIN}", creates_nothing=False)
    assert "is not a readable .npz" in line or "bad CRC" in line or "not a valid dataset" in line, line
    assert leftovers(data) == []
    # Served correctly, then damaged on disk: the load names the file and the command that fetches it again.
    server.files[f"/ogbench/{TRAIN}"] = published[TRAIN]
    assert run(capsys, *argv)[0] == 0
    damaged = bytearray((data / TRAIN).read_bytes())
    damaged[-100] ^= 0xFF
    (data / TRAIN).write_bytes(bytes(damaged))
    datasets._TRUSTED.clear()
    with pytest.raises(SorlError) as e:
        datasets.ensure_dataset(TASK, data)
    assert str(data / TRAIN) in str(e.value) and f"sorl data download {ENV} --force" in str(e.value)
    code, _, err = run(capsys, *argv, "--force")
    assert code == 0, err
    assert (data / TRAIN).read_bytes() == published[TRAIN]
    datasets.ensure_dataset(TASK, data)


def test_unreachable_host_is_one_line_with_the_manual_alternative(tmp_path, capsys, closed_port):
    url = f"http://127.0.0.1:{closed_port}/ogbench"
    argv = ["data", "download", ENV, "--data-dir", "{tmp}/data", "--mirror", url]
    line = assert_refused(tmp_path, capsys, argv, f"{url}/{TRAIN}: connection refused")
    assert f"put the published {TRAIN} and {VAL} in {tmp_path / 'data'}" in line and "--mirror" in line
    assert download.HF_MIRROR in line
    assert leftovers(tmp_path) == []


def test_training_with_an_unreachable_host_is_one_line(tmp_path, capsys, closed_port, monkeypatch):
    url = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv(download.MIRRORS_ENV, url)
    argv = ["train", "--task", TASK, "--data-dir", "{tmp}/data", "--run-dir", "{tmp}/run", "--no-progress"]
    line = assert_refused(tmp_path, capsys, argv, f"{url}/{TRAIN}: connection refused")
    assert "SORL_MIRRORS" in line


def test_mirror_list_first_fails_second_serves(server, published, tmp_path, capsys, closed_port, monkeypatch):
    dead = f"http://127.0.0.1:{closed_port}/ogbench"
    data = tmp_path / "data"
    code, _, err = run(capsys, "data", "download", ENV, "--data-dir", str(data), "--mirror", dead, "--mirror",
                       server.base(), "--no-progress")  # fmt: skip
    assert code == 0, err
    assert manifest.entries(data)[TRAIN]["source"] == f"{server.base()}/{TRAIN}"
    # The same through $SORL_MIRRORS (comma-separated), with a host that lacks the file (404) first.
    monkeypatch.setenv(download.MIRRORS_ENV, f"{server.base('/elsewhere')}, {server.base()}")
    other = tmp_path / "other"
    datasets.ensure_dataset(TASK, other, progress=False)
    assert manifest.entries(other)[VAL]["source"] == f"{server.base()}/{VAL}"
    assert ("HEAD", f"/elsewhere/{VAL}") in server.log


def test_no_download_gives_the_placement_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(download.NO_DOWNLOAD_ENV, "1")
    monkeypatch.setenv(download.MIRRORS_ENV, "http://127.0.0.1:9/never-asked")
    train, val = datasets.dataset_paths(ENV, tmp_path / "data")
    argv = ["train", "--task", TASK, "--data-dir", "{tmp}/data", "--run-dir", "{tmp}/run", "--no-progress"]
    line = assert_refused(tmp_path, capsys, argv, f"put the published files at {train} and {val}")
    assert "SORL_NO_DOWNLOAD" in line and f"sorl data download {ENV}" in line
    monkeypatch.delenv(download.NO_DOWNLOAD_ENV)
    with pytest.raises(SorlError, match="downloads are off \\(--no-download\\)"):
        datasets.ensure_dataset(TASK, tmp_path / "data", download=False)


def test_any_published_dataset_downloads(server, tmp_path, capsys):
    """A dataset sorl has no task for (a -noisy one) is fetched too, checked for OGBench's common keys."""
    data = tmp_path / "data"
    src = tmp_path / "src"
    src.mkdir()
    for name in ("cube-single-noisy-v0.npz", "cube-single-noisy-v0-val.npz"):
        np.savez_compressed(src / name, observations=np.zeros((4, 3), np.float32),
                            actions=np.zeros((4, 2), np.float32), terminals=np.array([0, 1, 0, 1], bool))  # fmt: skip
        server.files[f"/ogbench/{name}"] = (src / name).read_bytes()
    code, _, err = run(capsys, "data", "download", "cube-single-noisy", "--data-dir", str(data), "--mirror",
                       server.base(), "--no-progress")  # fmt: skip
    assert code == 0, err
    assert manifest.entries(data)["cube-single-noisy-v0.npz"]["provenance"] == "downloaded"


# ------------------------------------------------------------------------------------------------ pieces


def test_hugging_face_pages_become_their_file_addresses():
    repo = "https://huggingface.co/datasets/zhouzypaul/ogbench_datasets"
    assert download.normalize_base(repo) == f"{repo}/resolve/main"
    assert download.normalize_base(f"{repo}/tree/main") == f"{repo}/resolve/main"
    assert download.normalize_base(f"{repo}/tree/8e7f42/sub/") == f"{repo}/resolve/8e7f42/sub"
    assert download.normalize_base(f"{repo}/resolve/main/") == f"{repo}/resolve/main"
    assert download.normalize_base("https://example.org/ogbench/") == "https://example.org/ogbench"
    with pytest.raises(SorlError, match="not an http"):
        download.normalize_base("ftp://example.org/x")


def test_hosts_in_order(monkeypatch):
    monkeypatch.setenv(download.MIRRORS_ENV, "https://a.org/x,https://b.org/y/")
    assert download.base_urls() == ["https://a.org/x", "https://b.org/y"]
    assert download.base_urls(["https://c.org"]) == ["https://c.org"]  # --mirror replaces $SORL_MIRRORS
    monkeypatch.delenv(download.MIRRORS_ENV)
    assert download.base_urls() == [download.PUBLISHED_URL]


def test_the_85_published_datasets_resolve():
    assert len(download.PUBLISHED_DATASETS) == len(set(download.PUBLISHED_DATASETS)) == 85
    assert download.resolve("antmaze-large-navigate-task3") == download.Published(NAME, SPEC)
    assert download.resolve("visual-antmaze-large-navigate").spec is None
    assert download.resolve("scene-noisy-v0").name == "scene-noisy-v0"
    for name in ("humanoidmaze-giant-navigate-100m-v0", "cube-double-play-100m"):
        with pytest.raises(SorlError, match="100M"):
            download.resolve(name)


def test_a_generatable_dataset_downloaded_on_request_is_refetched_not_regenerated(server, tmp_path, capsys):
    """`sorl data download cube-single-play`: the published bytes instead of a local generation; training then uses
    them as they are, and a damaged copy's line says to fetch it again."""
    spec = resolve_env("cube-single-play")
    src, data = tmp_path / "src", tmp_path / "data"
    src.mkdir()
    for i, (name, episodes) in enumerate(((f"{spec.dataset_name}.npz", 2), (f"{spec.dataset_name}-val.npz", 1))):
        rng = np.random.default_rng(i)
        rows = episodes * 30
        arrays = {k: rng.uniform(-1, 1, (rows, *shape)).astype(np.float32)
                  for k, (kinds, shape) in checks.expected_layout(spec).items() if k != "terminals"}  # fmt: skip
        arrays["terminals"] = np.tile(np.arange(30) == 29, episodes)
        np.savez_compressed(src / name, **arrays)
        server.files[f"/ogbench/{name}"] = (src / name).read_bytes()
    code, _, err = run(capsys, "data", "download", "cube-single-play", "--data-dir", str(data), "--mirror",
                       server.base(), "--no-progress")  # fmt: skip
    assert code == 0, err
    train, _ = datasets.dataset_paths(spec, data)
    datasets.ensure_dataset("cube-single-play", data)  # present: neither generated nor fetched again
    assert manifest.entries(data)[train.name]["provenance"] == "downloaded"
    damaged = bytearray(train.read_bytes())
    damaged[-50] ^= 0xFF
    train.write_bytes(bytes(damaged))
    with pytest.raises(SorlError, match="sorl data download cube-single-play --force"):
        datasets.ensure_dataset("cube-single-play", data)
