"""Each verb at 1,000 and 10,000 steps: is it linear in what it reads? (issue 15)

    python bench/verbs.py                  chain and fan-out of 1,000 and 10,000 steps (≈ 3 min)
    python bench/verbs.py --sizes 500,5000 other sizes (the ratio is last ÷ first)
    python bench/verbs.py --shape chain    one shape
    python bench/verbs.py --json out.json  also write the figures as JSON

For each shape and size: a fresh database, `steplog run` of an offline pipeline (the same
pipelines as bench/run.py and bench/limits.py section 2), then every read verb on its job, each
run as a user runs it (`python -m steplog --db DB VERB ...` in a subprocess, wall time and peak
RSS measured by bench/limits.py's wrapper). The pipeline's last step is on an offline provider
told to fail (`options.fail`, `max_retries = 0`), so the job ends failed and `plan --job` has a
resume to predict. Beside each: the raw baseline, a plain sqlite3
`SELECT *` of the job's rows in a fresh python process. The ratio column is the largest size's
figure ÷ the smallest's: a verb linear in what it reads shows about the size ratio (10x), and
one at 1.5x the size ratio or more is flagged `SUPERLINEAR`. Process start (≈ 0.3–0.5 s) is part
of every figure, so small sizes read high and ratios read low; the `net` ratio subtracts the
time of `steplog --help` first. Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from limits import Ran, check, measure, raw_python, steplog_argv  # noqa: E402
from run import pipeline_toml  # noqa: E402  the pipelines bench/run.py times


@dataclass
class Figure:
    shape: str
    verb: str
    by_size: dict[int, tuple[float, float]] = field(default_factory=dict)  # seconds, MiB


def failing_last(toml: str) -> str:
    """The last step on a provider that always fails: the job ends failed, resumable."""
    head, sep, last = toml.rpartition("[steps.")
    last = last.replace('provider = "local"', 'provider = "flaky"')
    flaky = '[providers.flaky]\nkind = "offline"\nmax_retries = 0\noptions = { fail = true }\n\n'
    return head.replace("[steps.s0]", flaky + "[steps.s0]", 1) + sep + last


def verbs_for(db: Path, pipe: Path, out: Path, job: str, half: int) -> list[tuple[str, list]]:
    return [
        ("status JOB", ["status", job]),
        ("status JOB --json", ["status", job, "--json"]),
        ("plan PIPELINE", ["plan", str(pipe)]),
        ("plan PIPELINE --job JOB", ["plan", str(pipe), "--job", job]),
        ("timeline JOB -o FILE.svg", ["timeline", job, "-o", str(out / "t.svg")]),
        ("timeline JOB -o FILE.html", ["timeline", job, "-o", str(out / "t.html")]),
        (f"replay JOB --until N/2 ({half:,})", ["replay", job, "--until", str(half)]),
        ("verify JOB", ["verify", job]),
        ("export JOB -o FILE", ["export", job, "-o", str(out / "export.jsonl")]),
    ]


def one_size(tmp: Path, shape: str, steps: int, figures: dict[tuple[str, str], Figure]) -> None:
    work = tmp / f"{shape}-{steps}"
    work.mkdir()
    pipe = work / "pipeline.toml"
    pipe.write_text(failing_last(pipeline_toml(steps, shape)))
    db = work / "steplog.db"
    job = "wide"

    def record(verb: str, ran: Ran, note: str = "") -> None:
        key = verb.split(" (")[0].replace(f"{steps:,}", "N")
        figures.setdefault((shape, key), Figure(shape, key)).by_size[steps] = (
            ran.seconds,
            ran.rss_mib,
        )
        print(
            f"  {shape:<7} {steps:>6,}  {verb:<36} {ran.seconds:7.2f} s {ran.rss_mib:6.0f} MiB"
            + (f"  {note}" if note else ""),
            flush=True,
        )

    run = measure(steplog_argv(db, "run", "-q", str(pipe), "--job-id", job), cwd=work)
    check(run, "run", expect=1)  # the last step fails, so `plan --job` has a job to resume
    with sqlite3.connect(db) as conn:
        events = conn.execute("SELECT count(*) FROM events WHERE job_id = ?", (job,)).fetchone()[0]
    record("run", run, f"{events:,} events")
    raw = raw_python(
        f"import sqlite3; c = sqlite3.connect({str(db)!r}); "
        f"rows = c.execute('SELECT * FROM events WHERE job_id = ? ORDER BY version', "
        f"({job!r},)).fetchall()",
        cwd=work,
    )
    record("raw: SELECT * of the job's rows", raw)
    for verb, args in verbs_for(db, pipe, work, job, events // 2):
        ran = measure(steplog_argv(db, *args), cwd=work)
        check(ran, verb)
        record(verb, ran)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated step counts")
    parser.add_argument("--shape", choices=("chain", "fan-out"), action="append")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    shapes = args.shape or ["chain", "fan-out"]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"steplog verbs · {now} · {os.cpu_count()} cores · python {platform.python_version()} · "
        f"sqlite {sqlite3.sqlite_version} · sizes {', '.join(f'{s:,}' for s in sizes)} steps"
    )
    started = time.perf_counter()
    figures: dict[tuple[str, str], Figure] = {}
    with tempfile.TemporaryDirectory(prefix="steplog-verbs-") as name:
        tmp = Path(name)
        start = measure([sys.executable, "-m", "steplog", "--help"], cwd=tmp)
        print(f"  process start (`steplog --help`): {start.seconds:.2f} s, {start.rss_mib:.0f} MiB")
        for shape in shapes:
            for steps in sizes:
                one_size(tmp, shape, steps, figures)
    lo, hi = sizes[0], sizes[-1]
    expect = hi / lo
    print(f"\nsummary: time and peak RSS at {lo:,} and {hi:,} steps; ratio {hi:,} ÷ {lo:,}")
    print(
        f"  {'shape':<7} {'verb':<30} {lo:>8,} {hi:>8,} {'ratio':>6} {'net':>6}"
        f" {'MiB lo':>7} {'MiB hi':>7}"
    )
    for fig in figures.values():
        if lo not in fig.by_size or hi not in fig.by_size:
            continue
        (t_lo, m_lo), (t_hi, m_hi) = fig.by_size[lo], fig.by_size[hi]
        ratio = t_hi / t_lo if t_lo else float("nan")
        base = start.seconds if not fig.verb.startswith("raw") else 0.0
        net_lo, net_hi = max(t_lo - base, 1e-3), max(t_hi - base, 1e-3)
        net = net_hi / net_lo
        flag = "  SUPERLINEAR" if net >= 1.5 * expect else ""
        print(
            f"  {fig.shape:<7} {fig.verb:<30} {t_lo:7.2f}s {t_hi:7.2f}s {ratio:5.1f}x {net:5.1f}x"
            f" {m_lo:7.0f} {m_hi:7.0f}{flag}"
        )
    print(f"\n{len(figures)} figures in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": now,
                    "sizes": sizes,
                    "process_start_s": start.seconds,
                    "figures": [
                        {**asdict(f), "by_size": {str(k): v for k, v in f.by_size.items()}}
                        for f in figures.values()
                    ],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
