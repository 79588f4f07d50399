"""steplog at its limits: a 100 MB answer, a 10,000-step pipeline, a 1,000,000-event log.

    python bench/limits.py                 full sizes (a few minutes once the big log exists)
    python bench/limits.py --quick         10 MB answers, 1,000 steps, the 100,000-event log
    python bench/limits.py --only responses|steps|log
    python bench/limits.py --only responses --piece 8   streams of 8-character events
    python bench/limits.py --json out.json also write the figures as JSON

Every command runs as a user runs it: `steplog ...` in a subprocess. Its peak RSS is the
`ru_maxrss` of `wait4` on a shell that forks it (Linux carries a parent's peak into a child across
exec, so the child is not started by this process directly). Nothing here asserts anything: it
prints figures, each beside the same work done with raw sqlite3 / urllib where that makes sense.
See bench/README.md ("Limits") for what each figure means and the bound behind it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

MiB = 2**20


@dataclass
class Row:
    section: str
    name: str
    seconds: float
    rss_mib: float
    raw_seconds: float | None = None
    raw_rss_mib: float | None = None
    note: str = ""


ROWS: list[Row] = []


def show(row: Row) -> None:
    ROWS.append(row)
    raw = ""
    if row.raw_seconds is not None:
        raw = f"   raw {row.raw_seconds:7.2f} s {row.raw_rss_mib or 0:6.0f} MiB"
        if row.raw_seconds > 0:
            raw += f"  ({row.seconds / row.raw_seconds:.1f}x time)"
    print(
        f"  {row.name:<46} {row.seconds:7.2f} s {row.rss_mib:6.0f} MiB{raw}"
        + (f"  {row.note}" if row.note else ""),
        flush=True,
    )


@dataclass
class Ran:
    code: int
    seconds: float
    rss_mib: float
    out: str
    err: str


# Linux carries a process's peak RSS across fork and exec, so a child of this (large) process
# would report at least our size. The command is started by a small wrapper instead, which
# reports the peak of its own children (RUSAGE_CHILDREN: the command, or a shell pipeline's
# processes) and their wall time.
WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
code = subprocess.call(sys.argv[2:])
seconds = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
open(sys.argv[1], "w").write(json.dumps({"code": code, "seconds": seconds, "rss_kib": rss}))
"""


def measure(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    shell: str | None = None,
    timeout: float = 1800,
) -> Ran:
    """Run argv (or a shell pipeline) under the wrapper: wall time and peak RSS of all it ran."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
    full_env = {**inherited, "PYTHONPATH": str(ROOT), **(env or {})}
    command = ["/bin/sh", "-c", shell] if shell else argv
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        out, err = Path(scratch) / "out", Path(scratch) / "err"
        with out.open("wb") as fout, err.open("wb") as ferr:
            subprocess.run(
                [sys.executable, "-c", WRAPPER, str(report), *command],
                cwd=cwd,
                env=full_env,
                stdout=fout,
                stderr=ferr,
                timeout=timeout,
            )
        got = json.loads(report.read_text())
        return Ran(
            got["code"],
            got["seconds"],
            got["rss_kib"] / 1024,
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
        )


def steplog_argv(db: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "steplog", "--db", str(db), *args]


def raw_python(code: str, *, cwd: Path) -> Ran:
    return measure([sys.executable, "-c", code], cwd=cwd)


def check(ran: Ran, what: str, expect: int = 0) -> None:
    if ran.code != expect:
        print(f"  !! {what} exited {ran.code}: {ran.err.strip()[-400:]}")


# -- 1. one very large answer, each provider kind, whole and streamed --------------------------

PATTERN = "The quick brown fox jumps over the lazy dog; steplog keeps every answer. "


def answer_text(size: int) -> str:
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


class BigAnswerHandler(BaseHTTPRequestHandler):
    """Answers any chat request with `server.size` characters, in the protocol of its route.

    Built lazily and sent in slices, so the server's own memory stays small; a stream sends
    `server.piece` characters per event, as a real server sends a few tokens per event.
    """

    server: BigAnswerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        route = self.path.rstrip("/")
        kind = (
            "openai"
            if route.endswith("/chat/completions")
            else "ollama"
            if route.endswith("/api/chat")
            else "anthropic"
        )
        text = self.server.text
        if body.get("stream"):
            self._chunked(self._events(kind, text))
            return
        head, tail = self._whole(kind)
        length = len(head) + len(text) + len(tail)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(head)
        view = memoryview(self.server.raw)
        for i in range(0, len(view), MiB):
            self.wfile.write(view[i : i + MiB])
        self.wfile.write(tail)

    def _whole(self, kind: str) -> tuple[bytes, bytes]:
        if kind == "openai":
            return (
                b'{"model":"big","choices":[{"index":0,"finish_reason":"stop","message":'
                b'{"role":"assistant","content":"',
                b'"}}],"usage":{"prompt_tokens":3,"completion_tokens":7}}',
            )
        if kind == "ollama":
            return (
                b'{"model":"big","done":true,"done_reason":"stop","prompt_eval_count":3,'
                b'"eval_count":7,"message":{"role":"assistant","content":"',
                b'"}}',
            )
        return (
            b'{"type":"message","model":"big","stop_reason":"end_turn","usage":'
            b'{"input_tokens":3,"output_tokens":7},"content":[{"type":"text","text":"',
            b'"}]}',
        )

    def _events(self, kind: str, text: str) -> Iterator[bytes]:
        piece = self.server.piece
        for i in range(0, len(text), piece):
            part = json.dumps(text[i : i + piece])
            if kind == "openai":
                yield (
                    f'data: {{"model":"big","choices":[{{"index":0,"delta":{{"content":{part}}}}}]}}\n\n'
                ).encode()
            elif kind == "ollama":
                yield (
                    f'{{"model":"big","done":false,"message":{{"role":"assistant","content":{part}}}}}\n'
                ).encode()
            else:
                yield (
                    f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":0,'
                    f'"delta":{{"type":"text_delta","text":{part}}}}}\n\n'
                ).encode()
        if kind == "openai":
            yield b'data: {"model":"big","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
            yield b'data: {"model":"big","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}\n\n'
            yield b"data: [DONE]\n\n"
        elif kind == "ollama":
            yield (
                b'{"model":"big","done":true,"done_reason":"stop","prompt_eval_count":3,'
                b'"eval_count":7,"message":{"role":"assistant","content":""}}\n'
            )
        else:
            yield b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}\n\n'
            yield b'event: message_stop\ndata: {"type":"message_stop"}\n\n'

    def _chunked(self, events: Iterator[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        batch: list[bytes] = []
        size = 0
        for event in events:  # many events to one HTTP chunk, as a busy server's socket does
            batch.append(event)
            size += len(event)
            if size >= 64 * 1024:
                data = b"".join(batch)
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                batch, size = [], 0
        data = b"".join(batch)
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


class BigAnswerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, size: int, piece: int) -> None:
        super().__init__(("127.0.0.1", 0), BigAnswerHandler)
        self.piece = piece
        self.answer(size)

    def answer(self, size: int) -> None:
        self.text = answer_text(size)
        self.raw = self.text.encode()


def response_pipeline(kind: str, port: int, stream: bool) -> str:
    base = f"http://127.0.0.1:{port}" + ("/v1" if kind == "openai" else "")
    options = "options = { max_tokens = 100 }\n" if kind == "anthropic" else ""
    return (
        f'name = "big-answer"\n\n[providers.p]\nkind = "{kind}"\nmodel = "big"\n'
        f'base_url = "{base}"\nstream = {"true" if stream else "false"}\ntimeout_s = 120\n'
        f'max_retries = 0\n{options}\n[steps.answer]\nprovider = "p"\n'
        f'prompt = "write a very long answer"\noutput = "text"\n'
    )


RAW_DOWNLOAD = r"""
import hashlib, json, sqlite3, sys, urllib.request
url, db = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, data=json.dumps({"model": "big", "messages": [{"role": "user",
      "content": "x"}]}).encode(), headers={"Content-Type": "application/json"})
body = urllib.request.urlopen(req).read()
text = json.loads(body)["choices"][0]["message"]["content"]
del body
blob = text.encode()
conn = sqlite3.connect(db)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, size INTEGER, content BLOB)")
with conn:
    conn.execute("INSERT INTO blobs VALUES (?, ?, ?)", (hashlib.sha256(blob).hexdigest(), len(blob), blob))
"""


def bench_responses(tmp: Path, size: int, piece: int) -> None:
    print(
        f"\n1. one answer of {size / MiB:,.0f} MiB ({size:,} characters) from a server on "
        f"127.0.0.1; `steplog run` of a one-step pipeline; streams send {piece:,} characters "
        "per event"
    )
    server = BigAnswerServer(size, piece)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    port = server.server_address[1]
    try:
        raw_db = tmp / "raw-answer.db"
        raw = raw_python_args(
            RAW_DOWNLOAD, [f"http://127.0.0.1:{port}/v1/chat/completions", str(raw_db)], tmp
        )
        check(raw, "raw download")
        bare = raw_python("import hashlib, json, sqlite3, urllib.request", cwd=tmp)
        server.answer(1000)  # the same run with a 1,000-character answer: the process's own size
        small = tmp / "small"
        small.mkdir()
        (small / "pipeline.toml").write_text(response_pipeline("openai", port, False))
        empty = measure(
            steplog_argv(small / "steplog.db", "run", str(small / "pipeline.toml")), cwd=small
        )
        check(empty, "run, small answer")
        server.answer(size)
        print(
            f"  baseline: urllib + json.loads + one sqlite3 INSERT of the blob: "
            f"{raw.seconds:.2f} s, {raw.rss_mib:.0f} MiB, "
            f"{(raw.rss_mib - bare.rss_mib) * MiB / size:.1f}x the answer above the bare "
            f"interpreter's {bare.rss_mib:.0f} MiB; `steplog run` of a 1,000-character answer: "
            f"{empty.rss_mib:.0f} MiB"
        )
        for kind in ("openai", "ollama", "anthropic"):
            for stream in (False, True):
                work = tmp / f"answer-{kind}-{stream}"
                work.mkdir()
                pipe = work / "pipeline.toml"
                pipe.write_text(response_pipeline(kind, port, stream))
                db = work / "steplog.db"
                ran = measure(steplog_argv(db, "run", str(pipe), "--job-id", "big"), cwd=work)
                check(ran, f"run {kind}")
                stored = (
                    sqlite3.connect(db).execute("SELECT max(size) FROM blobs").fetchone()[0] or 0
                )
                factor = (ran.rss_mib - empty.rss_mib) * MiB / size
                how = "streamed" if stream else "whole"
                show(
                    Row(
                        "responses",
                        f"{kind}, {how}",
                        ran.seconds,
                        ran.rss_mib,
                        raw.seconds,
                        raw.rss_mib,
                        note=f"{factor:.1f}x the answer above a small run; "
                        f"stored blob {stored / MiB:,.1f} MiB",
                    )
                )
                shutil.rmtree(work)
    finally:
        server.shutdown()
        server.server_close()


def raw_python_args(code: str, args: list[str], cwd: Path) -> Ran:
    return measure([sys.executable, "-c", code, *args], cwd=cwd)


# -- 2. a 10,000-step pipeline -----------------------------------------------------------------


def kill_half_way(db: Path, pipe: Path, steps: int, cwd: Path) -> tuple[int, float]:
    """`steplog run` killed with SIGKILL once half its steps have succeeded (polled, bounded)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")},
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        steplog_argv(db, "run", str(pipe), "--job-id", "half"),
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0 = time.perf_counter()
    done = 0
    try:
        while time.perf_counter() - t0 < 600 and proc.poll() is None:
            time.sleep(0.02)
            if not db.exists():
                continue
            try:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                done = conn.execute(
                    "SELECT count(*) FROM events WHERE type = 'step.succeeded'"
                ).fetchone()[0]
                conn.close()
            except sqlite3.OperationalError:
                continue  # the schema is not there yet
            if done >= steps // 2:
                proc.kill()
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    return done, time.perf_counter() - t0


def bench_steps(tmp: Path, steps: int) -> None:
    from run import pipeline_toml  # the same pipelines bench/run.py times

    print(
        f"\n2. a {steps:,}-step pipeline on the offline provider (`steplog run`, then the "
        "read verbs on its job)"
    )
    for shape in ("chain", "fan-out"):
        work = tmp / f"steps-{shape}"
        work.mkdir()
        pipe = work / "pipeline.toml"
        pipe.write_text(pipeline_toml(steps, shape))
        db = work / "steplog.db"
        run = measure(steplog_argv(db, "run", str(pipe), "--job-id", "wide"), cwd=work)
        check(run, "run")
        events = sqlite3.connect(db).execute("SELECT count(*) FROM events").fetchone()[0]
        show(
            Row(
                "steps",
                f"{shape}: run",
                run.seconds,
                run.rss_mib,
                note=f"{events:,} events; {run.seconds / steps * 1e6:,.0f} µs a step",
            )
        )
        raw_job = raw_python(
            f"import sqlite3; c = sqlite3.connect({str(db)!r}); "
            "rows = c.execute(\"SELECT * FROM events WHERE job_id = 'wide'\").fetchall()",
            cwd=work,
        )
        for label, args in (
            ("status JOB", ("status", "wide")),
            ("status JOB --json", ("status", "wide", "--json")),
            ("status (latest job)", ("status",)),
            ("jobs", ("jobs",)),
            ("plan PIPELINE", ("plan", str(pipe))),
        ):
            ran = measure(steplog_argv(db, *args), cwd=work)
            check(ran, label)
            show(
                Row(
                    "steps",
                    f"{shape}: {label}",
                    ran.seconds,
                    ran.rss_mib,
                    raw_job.seconds,
                    raw_job.rss_mib,
                )
            )
        # killed (SIGKILL) once half its steps have succeeded, then resumed by a fresh process
        kdb = work / "killed.db"
        done, run_s = kill_half_way(kdb, pipe, steps, work)
        ran = measure(steplog_argv(kdb, "plan", str(pipe), "--job", "half"), cwd=work)
        check(ran, "plan --job")
        show(
            Row(
                "steps",
                f"{shape}: plan --job (resume prediction)",
                ran.seconds,
                ran.rss_mib,
                raw_job.seconds,
                raw_job.rss_mib,
            )
        )
        resumed = measure(steplog_argv(kdb, "resume", "half"), cwd=work)
        check(resumed, "resume")
        show(
            Row(
                "steps",
                f"{shape}: resume after a kill -9 half-way",
                resumed.seconds,
                resumed.rss_mib,
                note=f"{done:,} steps had succeeded at the kill, {run_s:.1f} s into the run",
            )
        )
        shutil.rmtree(work)


# -- 3. the 1,000,000-event log ----------------------------------------------------------------


def bench_log(tmp: Path, cache_dir: Path, events: int) -> None:
    import biglog

    log = biglog.ensure(cache_dir, events)
    db = tmp / "log.db"
    shutil.copyfile(log.db, db)
    job = log.big_job
    meta = log.meta
    print(
        f"\n3. the {meta['events']:,}-event log ({meta['jobs']:,} jobs, "
        f"{db.stat().st_size / MiB:,.0f} MiB file); JOB is {job} ({meta['big_job_events']:,} events)"
    )
    q = f"import sqlite3; c = sqlite3.connect({str(db)!r}); "
    raw_job = raw_python(
        q
        + f"rows = c.execute('SELECT * FROM events WHERE job_id = ? ORDER BY version', ({job!r},)).fetchall()",
        cwd=tmp,
    )
    raw_jobs = raw_python(
        q + "rows = c.execute('SELECT * FROM jobs ORDER BY job_id DESC LIMIT 50').fetchall()",
        cwd=tmp,
    )
    raw_head = raw_python(
        q
        + f"rows = c.execute('SELECT * FROM events WHERE job_id = ? ORDER BY version LIMIT 20', ({job!r},)).fetchall()",
        cwd=tmp,
    )
    raw_all = raw_python(
        q
        + "import hashlib\nfor row in c.execute('SELECT * FROM events'): hashlib.sha256(repr(row).encode())",
        cwd=tmp,
    )
    cli = f"{sys.executable} -m steplog --db {db}"
    for label, how, raw in (
        ("status (latest job)", steplog_argv(db, "status"), raw_job),
        ("status JOB", steplog_argv(db, "status", job), raw_job),
        ("status JOB --json", steplog_argv(db, "status", job, "--json"), raw_job),
        ("jobs", steplog_argv(db, "jobs"), raw_jobs),
        (
            "jobs --json --limit 100000",
            steplog_argv(db, "jobs", "--json", "--limit", "100000"),
            raw_jobs,
        ),
        ("events JOB | head", f"{cli} events {job} | head -n 20", raw_head),
        ("events JOB --json | head", f"{cli} events {job} --json | head -n 20", raw_head),
        ("verify JOB", steplog_argv(db, "verify", job), raw_all),
        ("verify (whole log)", steplog_argv(db, "verify"), raw_all),
    ):
        if isinstance(how, str):
            ran = measure([], cwd=tmp, shell=how)
        else:
            ran = measure(how, cwd=tmp)
        check(ran, label)
        show(Row("log", label, ran.seconds, ran.rss_mib, raw.seconds, raw.rss_mib))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="10 MB answers, 1,000 steps, 100,000 events"
    )
    parser.add_argument("--only", choices=("responses", "steps", "log"), action="append")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where bench/biglog.py keeps the generated log (default: the temp dir)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--piece",
        type=int,
        default=1024,
        help="characters per streamed event (default 1024; a real server sends a few)",
    )
    args = parser.parse_args()
    quick = args.quick
    only = set(args.only or ("responses", "steps", "log"))
    size = (10 if quick else 100) * 1_000_000
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"steplog limits · {now} · {os.cpu_count()} cores · python {platform.python_version()} · "
        f"sqlite {sqlite3.sqlite_version} · {'quick' if quick else 'full'} sizes"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="steplog-limits-") as name:
        tmp = Path(name)
        if "responses" in only:
            bench_responses(tmp, size, piece=args.piece)
        if "steps" in only:
            bench_steps(tmp, 1_000 if quick else 10_000)
        if "log" in only:
            bench_log(tmp, args.cache_dir, 100_000 if quick else 1_000_000)
    print(f"\n{len(ROWS)} figures in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": now,
                    "mode": "quick" if quick else "full",
                    "rows": [asdict(r) for r in ROWS],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
