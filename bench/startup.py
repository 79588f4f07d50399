"""Start-up time of the everyday read verbs against `sqlite-utils --help`, in the same run.

    python bench/startup.py               median of 9 fresh processes per command
    python bench/startup.py --repeat 15

Each command runs in a fresh process, round-robin (one of each, then the next round), so the
machine's slow moments fall on every command alike; the figure is the median wall time, and the
ratio divides it by the median of `sqlite-utils --help` from the same rounds; the CPU time
(user + system) each process used is shown beside it, steadier on a busy machine. `steplog jobs` and
`steplog status` read a small database this script makes first (one offline run of the example
pipeline). A last, untimed run of each steplog command with `-X importtime` lists which heavy
libraries it imported.

Then the time to the first step: the example pipeline run offline (`--quiet`), a fresh database
each time, and from its own log the time from `job.started` to the first `step.started` as a
share of the job (`job.started` → `job.succeeded`). Nothing here asserts a time. See
bench/README.md ("Start-up", "Time to the first step").
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "factory" / "pipeline.toml"
HEAVY = ("pydantic", "httpx", "anyio", "jinja2", "rich", "sqlite_utils")


def script(name: str) -> str:
    """A console script of this environment: beside the running interpreter, else the repo's
    .venv, else on PATH."""
    for folder in (Path(sys.executable).parent, ROOT / ".venv" / "bin"):
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"bench/startup.py: no `{name}` script found (run `make` first)")
    return found


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPLOG_", "PYTHON"))}
    env["COLUMNS"] = "100"  # the same help layout in every run
    return env


def make_database(folder: Path, steplog: str) -> Path:
    db = folder / "startup.db"
    subprocess.run(
        [
            steplog,
            "--db",
            str(db),
            "run",
            str(EXAMPLE),
            "--job-id",
            "startup",
            "--workspace",
            str(folder / "ws"),
            "--quiet",
        ],
        check=True,
        cwd=folder,
        env=environment(),
        stdout=subprocess.DEVNULL,
    )
    return db


def first_step_share(folder: Path, steplog: str, run: int) -> tuple[float, float]:
    """One run of the example in a fresh database: (to the first step.started, the job), s."""
    db = folder / f"first-{run}.db"
    argv = [steplog, "--db", str(db), "run", str(EXAMPLE), "--quiet"]
    subprocess.run(
        [*argv, "--workspace", str(folder / f"ws-{run}")],
        check=True,
        cwd=folder,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first: dict[str, float] = {}
    with sqlite3.connect(db) as conn:
        for type_, ts in conn.execute("SELECT type, ts FROM events ORDER BY seq"):
            first.setdefault(type_, datetime.fromisoformat(ts).timestamp())
    started = first["job.started"]
    return first["step.started"] - started, first["job.succeeded"] - started


def timed(argv: list[str], cwd: Path) -> tuple[float, float]:
    """Wall time of one fresh process, and the CPU time (user + system) it used."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=environment(), stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait
    if proc.returncode != 0:
        raise SystemExit(f"bench/startup.py: {' '.join(argv)} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def heavy_imports(argv: list[str], cwd: Path) -> list[str]:
    """The HEAVY libraries a command imported (top-level names in its -X importtime report)."""
    env = {**environment(), "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    imported = set()
    for line in proc.stderr.splitlines():
        name = line.rsplit("|", 1)[-1].strip()
        imported.add(name.split(".")[0])
    return [name for name in HEAVY if name in imported]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="fresh processes per command (≥ 7)")
    args = parser.parse_args()
    repeat = max(7, args.repeat)
    steplog, sqlite_utils = script("steplog"), script("sqlite-utils")
    with tempfile.TemporaryDirectory(prefix="steplog-startup-") as tmp:
        folder = Path(tmp)
        db = make_database(folder, steplog)
        commands = {
            "sqlite-utils --help": [sqlite_utils, "--help"],
            "steplog --help": [steplog, "--help"],
            "steplog jobs": [steplog, "--db", str(db), "jobs"],
            "steplog status": [steplog, "--db", str(db), "status"],
        }
        for argv in commands.values():  # warm the page cache; not counted
            timed(argv, folder)
        walls: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(repeat):
            for name, argv in commands.items():
                wall, cpu = timed(argv, folder)
                walls[name].append(wall)
                cpus[name].append(cpu)
        imports = {name: heavy_imports(argv, folder) for name, argv in commands.items()}
    base = statistics.median(walls["sqlite-utils --help"])
    cpu_base = statistics.median(cpus["sqlite-utils --help"])
    print(
        f"start-up: median of {repeat} fresh processes per command, round-robin, "
        f"python {sys.version.split()[0]}; ratio = median / sqlite-utils --help's"
    )
    print(
        f"{'command':<22}{'wall':>8}{'min':>8}{'max':>8}{'ratio':>8}{'cpu':>8}{'ratio':>8}"
        "  heavy imports"
    )
    for name in commands:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        print(
            f"{name:<22}{wall * 1000:>6.0f}ms{min(walls[name]) * 1000:>6.0f}ms"
            f"{max(walls[name]) * 1000:>6.0f}ms{wall / base:>7.2f}x"
            f"{cpu * 1000:>6.0f}ms{cpu / cpu_base:>7.2f}x  {', '.join(imports[name]) or '-'}"
        )
    with tempfile.TemporaryDirectory(prefix="steplog-first-step-") as tmp:
        runs = [first_step_share(Path(tmp), steplog, i) for i in range(repeat)]
    shares = sorted(to_first / job for to_first, job in runs)
    print(
        f"\ntime to the first step, the example pipeline offline, {repeat} runs "
        "(job.started -> first step.started, of job.started -> job.succeeded; target <= 10 %):"
    )
    print(
        f"  to the first step {statistics.median(r[0] for r in runs) * 1000:.1f} ms, "
        f"the job {statistics.median(r[1] for r in runs) * 1000:.1f} ms (medians); "
        f"share median {statistics.median(shares):.0%}, runs {shares[0]:.0%}–{shares[-1]:.0%}"
    )


if __name__ == "__main__":
    main()
