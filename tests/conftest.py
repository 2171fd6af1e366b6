"""Shared pytest set-up."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _usable_std_streams():
    # Some tests run CLI commands that swap sys.stderr while parsing; if a stream saved from an earlier test (a
    # capsys buffer pytest has since closed) is ever put back, later output would fail on a closed file.
    for name in ("stdout", "stderr"):
        if getattr(getattr(sys, name), "closed", False):
            setattr(sys, name, getattr(sys, f"__{name}__"))
    yield
