"""The bad-input catalogue of downloads (issue 30): `sorl data download`, and training on a dataset that must be
downloaded. Each case is refused with one line before any transfer starts and leaves every file byte-identical,
creating none. No case reaches a real host: the one host asked is a closed port on 127.0.0.1, and the others are
refused before any request.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from refusals import Refusal, run_case

from envs import download


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DEAD = f"http://127.0.0.1:{_closed_port()}/ogbench"
ENV = "antmaze-large-navigate"
DL = ["data", "download", ENV, "--data-dir", "{tmp}/data", "--no-progress"]
TRAIN = ["train", "--task", f"{ENV}-singletask-task1-v0", "--data-dir", "{tmp}/data", "--run-dir", "{tmp}/run",
         "--no-progress"]  # fmt: skip

# Case id -> environment variables it runs with (None: unset). Downloads are off unless a case turns them on.
ENVIRONMENT: dict[str, dict[str, str | None]] = {
    "download-host-unreachable": {download.NO_DOWNLOAD_ENV: None},
    "download-mirrors-env-not-a-url": {download.NO_DOWNLOAD_ENV: None, download.MIRRORS_ENV: "rail.example/x"},
    "download-data-dir-is-a-file": {download.NO_DOWNLOAD_ENV: None},
    "train-download-host-unreachable": {download.NO_DOWNLOAD_ENV: None, download.MIRRORS_ENV: DEAD},
    "train-no-download-bad-value": {download.NO_DOWNLOAD_ENV: "maybe"},
    "train-no-download-flag": {download.NO_DOWNLOAD_ENV: None, download.MIRRORS_ENV: DEAD},
    "train-mirrors-env-not-a-url": {download.NO_DOWNLOAD_ENV: "0", download.MIRRORS_ENV: f"{DEAD},ftp://x/y"},
}


def _a_file(tmp: Path) -> None:
    (tmp / "data").write_text("not a directory\n")


CASES: list[Refusal] = [
    # names
    Refusal("download-nothing", ["data", "download"], "name at least one task", None, "dataset"),
    Refusal("download-unknown-name", [*DL[:2], "antmaze-larg-navigate", *DL[3:]],
            "did you mean: antmaze-large-navigate", None, "dataset"),
    Refusal("download-100m", [*DL[:2], "humanoidmaze-giant-navigate-100m-v0", *DL[3:]],
            "100M-transition datasets (a directory of shards)", None, "dataset"),
    # hosts
    Refusal("download-mirror-not-a-url", [*DL, "--mirror", "rail.eecs.berkeley.edu/datasets/ogbench"],
            "--mirror 'rail.eecs.berkeley.edu/datasets/ogbench' is not an http(s) URL", None, "dataset"),
    Refusal("download-mirror-ftp", [*DL, "--mirror", "ftp://example.org/ogbench"], "is not an http(s) URL", None,
            "dataset"),
    Refusal("download-mirrors-env-not-a-url", DL, "$SORL_MIRRORS entry 'rail.example/x' is not an http(s) URL", None,
            "dataset"),
    Refusal("download-host-unreachable", [*DL, "--mirror", DEAD],
            f"could not download {ENV}-v0.npz: {DEAD}/{ENV}-v0.npz: connection refused; put the published", None,
            "dataset"),
    Refusal("download-data-dir-is-a-file", [*DL, "--mirror", DEAD], "cannot create data directory", _a_file,
            "dataset"),
    # downloads off ($SORL_NO_DOWNLOAD=1, as tests/conftest.py sets it)
    Refusal("download-while-off", DL, "downloads are off ($SORL_NO_DOWNLOAD=1", None, "dataset"),
    Refusal("train-no-download", TRAIN, f"downloads are off ($SORL_NO_DOWNLOAD): `sorl data download {ENV} --data-dir",
            None, "dataset"),
    Refusal("train-no-download-flag", [*TRAIN, "--no-download"], "downloads are off (--no-download)", None,
            "dataset"),
    Refusal("train-no-download-bad-value", TRAIN, "$SORL_NO_DOWNLOAD='maybe': set it to 1", None, "dataset"),
    Refusal("train-mirrors-env-not-a-url", TRAIN, "$SORL_MIRRORS entry 'ftp://x/y' is not an http(s) URL", None,
            "dataset"),
    Refusal("train-download-host-unreachable", TRAIN, f"{DEAD}/{ENV}-v0.npz: connection refused", None, "dataset"),
    Refusal("generate-expert-data", ["data", "generate", ENV, "--data-dir", "{tmp}/data"],
            f"`sorl data download {ENV} --data-dir", None, "dataset"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(request, tmp_path, capsys, monkeypatch, case: Refusal):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OGBENCH_DATA_DIR", str(tmp_path / "default-data"))
    monkeypatch.setenv(download.NO_DOWNLOAD_ENV, "1")
    monkeypatch.delenv(download.MIRRORS_ENV, raising=False)
    monkeypatch.setattr(download, "TIMEOUT", (2.0, 5.0))
    monkeypatch.setattr(download, "RETRIES", 0)
    for name, value in ENVIRONMENT.get(case.id, {}).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    run_case(request, tmp_path, capsys, case)
