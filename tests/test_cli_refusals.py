"""What the CLI refuses before it does anything (a database that is not there, a workspace it
cannot write, a malformed option, base_url or database path) and output it cannot write (a full
disk, a FIFO): a command that fails leaves nothing behind and says why in one line."""

from __future__ import annotations

import os

import pytest

from tests.cli_process import needs_permissions, steplog
from tests.on_disk import EXAMPLE, db_rows

pytestmark = pytest.mark.slow  # the real CLI in a subprocess, every test


def _refused(result, *needles: str) -> None:
    assert result.code == 2, (result.code, result.err)
    assert result.err.count("\n") == 1 and result.err.startswith("error: "), result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in result.err, result.err


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "j"],
        ["jobs"],
        ["events", "j"],
        ["events", "j", "--follow", "--wait", "0"],
        ["audit", "j"],
        ["export", "j"],
        ["timeline", "j", "-o", "-"],
        ["replay", "j", "--until", "1"],
        ["replay", "j", "--until", "1", "--fork", "k"],
        ["resume", "j"],
    ],
)
def test_a_verb_that_needs_a_job_creates_no_database_and_no_directory(tmp_path, args):
    """A typo in --db, or a directory not there yet: the verb says so; it used to leave an empty
    database (and its directory) behind while answering `unknown job`."""
    db = tmp_path / "missing" / "steplog.db"
    _refused(steplog(db, *args, cwd=tmp_path), "no database at", str(db))
    assert not db.parent.exists()


def test_plan_before_the_first_run_still_works_and_creates_no_database(tmp_path):
    result = steplog(tmp_path / "new.db", "plan", str(EXAMPLE), cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.err.startswith(f"note: no database at {tmp_path / 'new.db'} yet")
    assert not (tmp_path / "new.db").exists()


def _seeded(tmp_path):
    db = tmp_path / "s.db"
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "seed", "-q").code == 0
    return db


def test_a_workspace_under_a_file_is_refused_before_the_job_starts(tmp_path):
    """Found only when the first file step wrote, it failed the job after the calls before it
    were paid for; now it is refused up front and nothing is recorded."""
    db = _seeded(tmp_path)
    (tmp_path / "afile").write_text("x")
    before = db_rows(db, "SELECT count(*) FROM events")
    result = steplog(db, "run", str(EXAMPLE), "--job-id", "w", "--workspace", "afile/sub", "-q")
    _refused(result, "workspace", "afile")
    assert db_rows(db, "SELECT count(*) FROM events") == before


def test_a_fork_into_a_workspace_under_a_file_is_refused_before_it_is_logged(tmp_path):
    """replay --fork appended the fork, then failed restoring its files: a job was left that
    resume refuses."""
    db = _seeded(tmp_path)
    (tmp_path / "afile").write_text("x")
    before = db_rows(db, "SELECT count(*) FROM events")
    result = steplog(
        db,
        "replay",
        "seed",
        "--until",
        "5",
        "--fork",
        "f",
        "--workspace",
        str(tmp_path / "afile" / "ws"),
    )
    _refused(result, "workspace", "afile")
    assert db_rows(db, "SELECT count(*) FROM events") == before


@needs_permissions
def test_an_unwritable_workspace_is_refused_before_the_job_starts(tmp_path):
    db = _seeded(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    before = db_rows(db, "SELECT count(*) FROM events")
    result = steplog(
        db,
        "run",
        str(EXAMPLE),
        "--job-id",
        "w",
        "--workspace",
        str(locked / "w"),
        "-q",
        as_plain_user=True,
    )
    _refused(result, "not writable")
    assert db_rows(db, "SELECT count(*) FROM events") == before


@pytest.mark.parametrize("how", ["option", "env"])
def test_a_grace_of_nan_is_refused(tmp_path, how):
    """click's FloatRange lets NaN through (it compares false with both bounds)."""
    db = _seeded(tmp_path)
    args, env = (["--grace", "nan"], None) if how == "option" else ([], {"STEPLOG_GRACE_S": "nan"})
    result = steplog(db, "run", str(EXAMPLE), "--job-id", "g", "-q", *args, env=env)
    _refused(result, "--grace")
    assert db_rows(db, "SELECT count(*) FROM events WHERE job_id = 'g'") == [(0,)]


@needs_permissions
def test_a_read_only_sidecar_left_by_a_reader_is_named_when_writing(tmp_path):
    """Reading a 0444 database leaves -wal/-shm with mode 0444; after `chmod u+w` on the
    database alone a write failed with SQLite's bare "attempt to write a readonly database"."""
    db = _seeded(tmp_path)
    before = db_rows(db, "SELECT count(*) FROM events")  # (a connection here would tidy up)
    db.chmod(0o444)
    assert steplog(db, "status", "seed", as_plain_user=True).code == 0
    shm = db.with_name(db.name + "-shm")
    db.chmod(0o644)
    if not shm.exists() or shm.stat().st_mode & 0o222:
        pytest.skip("no read-only -shm was left behind here")
    result = steplog(db, "run", str(EXAMPLE), "--job-id", "w", "-q", as_plain_user=True)
    _refused(result, "is read-only", "beside it is not writable")
    assert steplog(db, "sql", "SELECT count(*) FROM events", "--csv").out.split()[1] == str(
        before[0][0]
    )
    assert steplog(db, "status", "seed", as_plain_user=True).code == 0  # reading still works
    for sidecar in (shm, db.with_name(db.name + "-wal")):  # what the message tells the user
        sidecar.unlink(missing_ok=True)
    assert steplog(db, "run", str(EXAMPLE), "--job-id", "w", "-q", as_plain_user=True).code == 0
    assert db_rows(db, "SELECT count(*) FROM events") > before


def _remote_pipeline(tmp_path, base_url: str):
    path = tmp_path / "remote.toml"
    path.write_text(
        'name = "remote"\n[providers.r]\nkind = "openai"\n'
        f'base_url = "{base_url}"\nmodel = "m"\nmax_retries = 0\n'
        '[steps.a]\nprovider = "r"\nprompt = "hi"\n'
    )
    return path


@pytest.mark.parametrize(
    ("base_url", "problem"),
    [
        ("http://[::1", "is not a valid URL"),
        ("http://proxy:${PW}@[::1/v1", "is not a valid URL"),
        ("http://127.0.0.1:99999/v1", "has a bad port"),
        (
            "http://${HOST}:${PORT}/v1",
            "takes ${NAME} in its user or password, host, path or query, not in its port",
        ),
        ("ftp://127.0.0.1/v1", "must start with http:// or https://"),
        ("127.0.0.1:8080/v1", "must start with http:// or https://"),
        ("http:///v1", "has no host"),
    ],
)
def test_a_malformed_base_url_is_refused_when_the_pipeline_loads(tmp_path, base_url, problem):
    """These were tracebacks (exit 1) from urlsplit; `ftp://` even started the job, which then
    crashed building its provider and stayed `running`."""
    db = _seeded(tmp_path)
    pipeline = _remote_pipeline(tmp_path, base_url)
    env = {"OPENAI_API_KEY": "sk-test-key", "PW": "pw-secret-1", "HOST": "127.0.0.1", "PORT": "9"}
    before = db_rows(db, "SELECT count(*) FROM events")
    for args in (
        ["run", str(pipeline), "-q"],
        ["plan", str(pipeline)],
        ["providers", "check", str(pipeline)],
    ):
        result = steplog(db, *args, env=env)
        _refused(result, f"provider 'r': base_url {problem}")
        assert "pw-secret-1" not in result.err
    assert db_rows(db, "SELECT count(*) FROM events") == before


def test_a_base_url_made_malformed_by_the_environment_is_refused_before_the_job_starts(tmp_path):
    db = _seeded(tmp_path)
    pipeline = _remote_pipeline(tmp_path, "http://${HOST}:9/v1")
    before = db_rows(db, "SELECT count(*) FROM events")
    result = steplog(
        db, "run", str(pipeline), "-q", env={"OPENAI_API_KEY": "sk-test-key", "HOST": "[::1-secret"}
    )
    _refused(result, "base_url, with HOST from the environment, is not a valid URL")
    assert "secret" not in result.err
    assert db_rows(db, "SELECT count(*) FROM events") == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(
    "args", [["export", "seed"], ["status", "seed", "--json"], ["events", "seed"], ["jobs"]]
)
def test_output_to_a_full_disk_is_one_line(tmp_path, args):
    """`steplog export JOB > backup.jsonl` on a full disk was a traceback (exit 1)."""
    db = _seeded(tmp_path)
    with open("/dev/full", "w") as full:
        result = steplog(db, *args, stdout=full)
    assert result.code == 2, result.err
    assert result.err == "error: cannot write: No space left on device\n"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["jobs", "--limit", "99999999999999999999999"], "--limit"),
        (["sql", "SELECT :n", "--param", "n=99999999999999999999999"], "--param n"),
    ],
)
def test_a_number_too_large_for_sqlite_is_one_line(tmp_path, args, needle):
    """Both were OverflowError tracebacks (exit 1) from binding the value."""
    db = _seeded(tmp_path)
    _refused(steplog(db, *args), needle)


@pytest.mark.parametrize(
    "verb", [["status"], ["run", str(EXAMPLE), "-q"], ["verify"], ["sql", "SELECT 1"]]
)
def test_a_device_as_the_database_is_named_as_not_a_regular_file(tmp_path, verb):
    """--db /dev/null was reported as "disk full or file size limit reached"."""
    result = steplog(tmp_path / "unused.db", "--db", os.devnull, *verb, cwd=tmp_path)
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err and "disk full" not in result.err, result.err


def test_an_output_that_is_a_fifo_or_device_is_written_to_not_replaced(tmp_path):
    """`export -o /dev/stdout` or a named pipe: the output was replaced by a regular file (as
    root, `-o /dev/full` turned the device into a file)."""
    import stat
    import threading

    db = _seeded(tmp_path)
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = steplog(db, "export", "seed", "--output", str(fifo))
    reader.join(timeout=30)
    assert result.code == 0, result.err
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    exported = steplog(db, "export", "seed")
    assert received == [exported.out.encode()]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
