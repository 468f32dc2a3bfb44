"""A command whose reader goes away (``cx-connector customers list | head -1``) ends quietly.

Real processes and real pipes: the bug was a "command failed" traceback on stderr and exit
code 1, from Python's BrokenPipeError, which only a real closed pipe raises.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cx_connector.cli.base import EXIT_BROKEN_PIPE
from cx_connector.scoring import run
from tests.scoring.shop import add, order, tp


@pytest.fixture
def config_file(tmp_path, database_url, rt):
    add(rt, order("ann", rt.now(), 30, "1", "coffee"), tp("email_engaged", "bob", rt.now()))
    run.run(rt)
    cfg = tmp_path / "cx.yaml"
    cfg.write_text(f"database_url: {database_url}\n")
    return cfg


def into_a_closed_pipe(*args: str, cwd) -> subprocess.CompletedProcess:
    """Run ``cx-connector ARGS`` with its stdout a pipe whose reader has already gone: its
    first write fails, whenever it comes."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "cx_connector", *args], stdout=write,
                              stderr=subprocess.PIPE, text=True, cwd=cwd, timeout=120)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [
    ["customers", "explain", "1"],
    ["customers", "list"],           # a table: written without a flush, so it fails at the end
    ["customers", "show", "ann@example.com"],
    ["score", "--customer", "1"],
    ["kpis", "--json"],
])
def test_a_reader_that_goes_away_ends_the_command_quietly(config_file, tmp_path, args):
    done = into_a_closed_pipe("--config", str(config_file), *args, cwd=tmp_path)
    assert done.stderr == ""  # no "command failed", no "Exception ignored ... BrokenPipeError"
    assert done.returncode == EXIT_BROKEN_PIPE == 141


def test_the_demo_piped_into_head(tmp_path):
    """`cx-connector demo | head -1`: head prints the first line and leaves while the demo
    still writes. Depending on who is faster the demo may have written everything first
    (exit 0); either way nothing is said on stderr."""
    demo = subprocess.Popen([sys.executable, "-m", "cx_connector", "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    head = subprocess.run(["head", "-1"], stdin=demo.stdout, capture_output=True, text=True, timeout=120)
    demo.stdout.close()  # only head reads it now
    _, err = demo.communicate(timeout=120)
    assert head.stdout.startswith("cx-connector demo: ")
    assert err.decode() == ""
    assert demo.returncode in (0, EXIT_BROKEN_PIPE)
