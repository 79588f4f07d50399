"""The guard in tests/conftest.py keeps `make test-fast` (-m "not slow") free of subprocesses:
a test not marked slow that starts a process fails, however it starts one, even from a
module-scoped fixture or behind an `except BaseException`; a test marked slow may.

Checked on a small suite of its own, run by pytest in a child process with this conftest."""

from __future__ import annotations

import re
import textwrap

import pytest

from tests.on_disk import ROOT

pytestmark = pytest.mark.slow  # it runs pytest in a subprocess, whose slow test starts another

pytest_plugins = ["pytester"]

PROBES = """
import os
import subprocess
import sys

import pytest


def test_unmarked_run():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_unmarked_swallowed():
    try:
        subprocess.Popen([sys.executable, "-c", "pass"]).wait()
    except BaseException:
        pass


def test_unmarked_system():
    os.system("true")


@pytest.fixture(scope="module")
def spawned():
    return subprocess.run([sys.executable, "-c", "print(7)"], capture_output=True, text=True)


def test_unmarked_module_fixture(spawned):
    assert spawned.stdout == "7\\n"


def test_unmarked_without_a_process():
    assert True
"""

SLOW_PROBES = """
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spawned():
    return subprocess.run([sys.executable, "-c", "print(7)"], capture_output=True, text=True)


def test_marked_slow_run():
    assert subprocess.run([sys.executable, "-c", "print(7)"], capture_output=True).stdout


def test_marked_slow_module_fixture(spawned):
    assert spawned.stdout == "7\\n"
"""


def test_a_process_outside_the_slow_lane_fails_its_test(pytester: pytest.Pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the child imports tests.conftest
    pytester.makeini(
        textwrap.dedent(
            """
            [pytest]
            addopts = --strict-markers -p no:cacheprovider
            markers = slow: spawns real subprocesses or runs long fault loops
            """
        )
    )
    pytester.makeconftest("from tests.conftest import *  # noqa: F401,F403 - the guard\n")
    pytester.makepyfile(test_probes=PROBES, test_probes_slow=SLOW_PROBES)
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=3, failed=3, errors=1)
    outcomes = dict(
        re.findall(r"^test_probes\w*\.py::(\w+) (PASSED|FAILED|ERROR)", result.stdout.str(), re.M)
    )
    assert outcomes == {
        "test_unmarked_run": "FAILED",
        "test_unmarked_swallowed": "FAILED",
        "test_unmarked_system": "FAILED",
        "test_unmarked_module_fixture": "ERROR",  # in its setup: the fixture started it
        "test_unmarked_without_a_process": "PASSED",
        "test_marked_slow_run": "PASSED",
        "test_marked_slow_module_fixture": "PASSED",
    }, result.stdout.str()
    text = result.stdout.str()
    assert "test_unmarked_run started a process (subprocess.Popen(" in text
    assert "test_unmarked_system started a process (os.system('true',))" in text
    assert text.count("but is not marked slow") >= 4
