"""Workers: jobs per second and per-step overhead with 1, 2 and 4 `steplog worker` processes on
SQLite and PostgreSQL, against a loopback server answering after a fixed latency, beside the
ideal (calls ÷ concurrency × latency).

    python bench/workers.py            48 jobs of 2 steps, 100 ms a call, 1/2/4 workers (≈ 2 min)
    python bench/workers.py --quick    24 jobs, 1 and 2 workers, SQLite and PostgreSQL
    python bench/workers.py --json F   also write the figures as JSON

Each worker runs `--concurrency 4` jobs at once; the provider's max_concurrency (64) is above
what the workers ask, so the limit shared through the store admits every call and only its cost
shows. The jobs are submitted first (`Steplog.submit`); the wall time is the log's own, from
the first job.started to the last job.succeeded; the ideal is ⌈jobs ÷ (workers × 4)⌉ × steps ×
latency, the time the calls alone would take; ms/step is what each of a lane's steps cost
beyond its call, (wall − ideal) ÷ (rounds × steps). Each configuration runs on a fresh database
(a new SQLite file, a new PostgreSQL database on a throw-away cluster started here). Nothing
here asserts a time: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT)]

from steplog.api import Steplog  # noqa: E402

PER_WORKER = 4  # --concurrency of each worker
STEPS = 2


def pipeline_text(port: int) -> str:
    return "\n".join(
        [
            'name = "workers-bench"',
            "[inputs.n]",
            "[providers.remote]",
            'kind = "openai"',
            f'base_url = "http://127.0.0.1:{port}/v1"',
            'model = "fake-model"',
            "max_concurrency = 64",
            "backoff_base_s = 0.01",
            "[steps.a]",
            'provider = "remote"',
            'prompt = "job {{ inputs.n }}: first"',
            "[steps.b]",
            'provider = "remote"',
            'needs = ["a"]',
            'prompt = "job {{ inputs.n }}: second, after {{ steps.a.output }}"',
            "",
        ]
    )


class Server:
    """tests/fake_llm_server.py as a subprocess: a real HTTP server on 127.0.0.1."""

    def __init__(self, work: Path, delay: float) -> None:
        port_file = work / "server.port"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "fake_llm_server.py"),
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--delay",
                str(delay),
            ]
        )
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("the loopback LLM server did not start")
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def ts_seconds(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def log_span(db: str, jobs: int) -> tuple[float, int]:
    """First job.started to last job.succeeded, from the log, and the jobs that succeeded."""
    starts, ends = [], []
    with Steplog(db) as app:
        for i in range(jobs):
            for ev in app.stored_events(f"j{i:04d}", type="job.*"):
                if ev.type == "job.started":
                    starts.append(ts_seconds(ev.ts))
                elif ev.type == "job.succeeded":
                    ends.append(ts_seconds(ev.ts))
    return max(ends) - min(starts), len(ends)


def run_config(db: str, pipeline: Path, jobs: int, workers: int, env: dict[str, str]) -> dict:
    spaces = pipeline.parent / "ws" / str(abs(hash(db)))
    with Steplog(db) as app:
        for i in range(jobs):
            job = f"j{i:04d}"
            app.submit(pipeline, inputs={"n": str(i)}, job_id=job, workspace=spaces / job)
    steplog = str(ROOT / ".venv" / "bin" / "steplog")
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                steplog,
                "--db",
                db,
                "worker",
                "--drain",
                "--concurrency",
                str(PER_WORKER),
                "--worker-id",
                f"bench-{w}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"a worker exited {proc.returncode}: {err.strip()[-300:]}")
    wall_processes = time.perf_counter() - t0
    span, succeeded = log_span(db, jobs)
    return {"span_s": span, "processes_s": wall_processes, "succeeded": succeeded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per call")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    jobs = 24 if args.quick else 48
    counts = [1, 2] if args.quick else [1, 2, 4]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="steplog-workers-") as tmp:
        work = Path(tmp)
        server = Server(work, args.latency)
        cluster = None
        try:
            pipeline = work / "pipeline.toml"
            pipeline.write_text(pipeline_text(server.port))
            backends = ["sqlite"]
            try:
                from tests.postgres_cluster import PostgresCluster

                cluster = PostgresCluster.start()
                backends.append("postgresql")
            except Exception as exc:  # no PostgreSQL here: the SQLite figures alone
                print(f"(PostgreSQL skipped: {exc})")
            print(
                f"{jobs} jobs of {STEPS} steps, {args.latency * 1000:.0f} ms a call, "
                f"--concurrency {PER_WORKER} per worker"
            )
            print(
                f"  {'store':10} {'workers':>7} {'jobs/s':>8} {'wall s':>7} {'ideal s':>7}"
                f" {'ms/step':>8}  ratio"
            )
            for backend in backends:
                for workers in counts:
                    if backend == "sqlite":
                        db = str(work / f"w{workers}.db")
                    else:
                        db = cluster.url(cluster.create_database(f"w{workers}"))
                    found = run_config(db, pipeline, jobs, workers, env)
                    rounds = math.ceil(jobs / (workers * PER_WORKER))
                    ideal = rounds * STEPS * args.latency
                    span = found["span_s"]
                    # what each lane's steps cost beyond their calls: a lane runs rounds × STEPS
                    overhead_ms = (span - ideal) / (rounds * STEPS) * 1000
                    print(
                        f"  {backend:10} {workers:7} {jobs / span:8.1f} {span:7.2f} {ideal:7.2f}"
                        f" {overhead_ms:8.0f}  {span / ideal:4.2f}x ideal"
                        f" ({found['succeeded']} succeeded)"
                    )
                    report[f"{backend}/{workers}"] = {**found, "ideal_s": ideal}
        finally:
            server.stop()
            if cluster is not None:
                cluster.stop()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
