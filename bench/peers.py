"""steplog beside its peers, measured in the same run: LangGraph (SqliteSaver, durability="sync")
and DBOS (SQLite system database) on the same workload.

    python bench/peers.py            N = 100 and 1,000, median of 5 (about 2 minutes)
    python bench/peers.py --quick    N = 100, median of 3
    python bench/peers.py --json F   also write the figures as JSON

The workload: a linear chain of N durable no-op steps, each returning about 200 bytes, each
step's result committed before the next starts. Every repetition is a fresh process and a fresh
database file. steplog runs through `steplog run` (the CLI, offline provider); its "run" time is
the job's own (job.started → job.succeeded, from the log), the peers' is the graph's invoke or
the workflow's call, timed inside their process. "wall" is the whole process, start-up included.

The peers are installed into their own virtual environment, bench/.peers-venv (made on the
first run; never into the project's). Nothing here asserts a time: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS_VENV = HERE / ".peers-venv"
PEER_PACKAGES = ["langgraph", "langgraph-checkpoint-sqlite", "dbos"]
ANSWER_BYTES = 200

LANGGRAPH = """
import json, sqlite3, sys, time
from typing import TypedDict
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

n, db = int(sys.argv[1]), sys.argv[2]

class State(TypedDict):
    out: str

def node_for(i):
    def node(state):
        return {"out": f"step {i:05d} " + "x" * 189}
    return node

t0 = time.perf_counter()
graph = StateGraph(State)
for i in range(n):
    graph.add_node(f"s{i}", node_for(i))
graph.add_edge(START, "s0")
for i in range(1, n):
    graph.add_edge(f"s{i - 1}", f"s{i}")
graph.add_edge(f"s{n - 1}", END)
app = graph.compile(checkpointer=SqliteSaver(sqlite3.connect(db, check_same_thread=False)))
t1 = time.perf_counter()
result = app.invoke(
    {"out": ""},
    {"configurable": {"thread_id": "bench"}, "recursion_limit": n + 10},
    durability="sync",
)
t2 = time.perf_counter()
print(json.dumps({"setup_s": t1 - t0, "run_s": t2 - t1, "answer_bytes": len(result["out"])}))
"""

DBOS_CHAIN = """
import json, sys, time
n, db = int(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
from dbos import DBOS

DBOS(config={"name": "bench", "system_database_url": f"sqlite:///{db}",
             "log_level": "WARNING", "console_log_level": "WARNING"})

@DBOS.step()
def step(i: int) -> str:
    return f"step {i:05d} " + "x" * 189

@DBOS.workflow()
def chain(count: int) -> str:
    out = ""
    for i in range(count):
        out = step(i)
    return out

DBOS.launch()
t1 = time.perf_counter()
result = chain(n)
t2 = time.perf_counter()
DBOS.destroy()
print(json.dumps({"setup_s": t1 - t0, "run_s": t2 - t1, "answer_bytes": len(result)}))
"""


def chain_pipeline(n: int) -> str:
    """N offline steps in a chain: each needs the one before (its answer is committed first)."""
    lines = ['name = "chain"', "", "[providers.local]", 'kind = "offline"', ""]
    for i in range(n):
        lines += [f"[steps.s{i}]", 'provider = "local"', f'prompt = "step {i:05d}"']
        if i:
            lines.append(f'needs = ["s{i - 1}"]')
        lines.append("")
    return "\n".join(lines)


def ensure_peers_venv() -> Path:
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".installed"
    if not stamp.exists():
        print(f"installing {', '.join(PEER_PACKAGES)} into {PEERS_VENV} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
        stamp.touch()
    return python


def versions(python: Path) -> str:
    code = (
        "from importlib.metadata import version as v; "
        f"print(', '.join(p + ' ' + v(p) for p in {PEER_PACKAGES!r}))"
    )
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()


def run_peer(python: Path, code: str, n: int, db: Path) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(python), "-c", code, str(n), str(db)], capture_output=True, text=True, timeout=600
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"peer failed: {done.stderr.strip().splitlines()[-1:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {**figures, "wall_s": wall}


def steplog_job_figures(db: Path) -> tuple[float, int]:
    """The job's own duration (job.succeeded's duration_s) and the last step's answer size."""
    with sqlite3.connect(db) as conn:
        (duration,) = conn.execute(
            "SELECT json_extract(data, '$.duration_s') FROM events WHERE type = 'job.succeeded'"
        ).fetchone()
        (size,) = conn.execute(
            "SELECT b.size FROM events AS e JOIN blobs AS b "
            "ON b.sha256 = json_extract(e.data, '$.output_sha256') "
            "WHERE e.type = 'step.succeeded' ORDER BY e.seq DESC LIMIT 1"
        ).fetchone()
    return float(duration), int(size)


def run_steplog(n: int, work: Path) -> dict:
    pipeline = work / f"chain{n}.toml"
    pipeline.write_text(chain_pipeline(n))
    db = work / "steplog.db"
    steplog = ROOT / ".venv" / "bin" / "steplog"
    cmd = [str(steplog), "--db", str(db), "run", str(pipeline), "--quiet"]
    cmd += ["--workspace", str(work / "ws")]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=work)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"steplog run failed: {done.stderr.strip()}")
    run_s, size = steplog_job_figures(db)
    return {"run_s": run_s, "wall_s": wall, "answer_bytes": size}


def fresh_dir(base: Path, name: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=name, dir=base))
    return path


def measure(python: Path, n: int, repeat: int, base: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {"steplog": [], "langgraph": [], "dbos": []}
    for _ in range(repeat):  # interleaved, so a slow moment of the machine hits all three
        found["steplog"].append(run_steplog(n, fresh_dir(base, "steplog")))
        found["langgraph"].append(
            run_peer(python, LANGGRAPH, n, fresh_dir(base, "langgraph") / "lg.db")
        )
        found["dbos"].append(run_peer(python, DBOS_CHAIN, n, fresh_dir(base, "dbos") / "dbos.db"))
    return found


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 100 only, median of 3")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    sizes, repeat = ([100], 3) if args.quick else ([100, 1000], 5)
    python = ensure_peers_venv()
    print(f"peers: {versions(python)}; steplog from {ROOT}")
    print(f"chain of N durable steps, ~{ANSWER_BYTES} bytes each; median of {repeat}, a fresh")
    print("process and database each; run = the workload inside the process, wall = the process")
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="steplog-peers-") as tmp:
        for n in sizes:
            found = measure(python, n, repeat, Path(tmp))
            ours_run = median(found["steplog"], "run_s")
            ours_wall = median(found["steplog"], "wall_s")
            print(f"\nN = {n:,}")
            print(f"  {'':10} {'µs/step (run)':>14} {'wall s':>8} {'answer B':>9}  vs steplog")
            for name, rows in found.items():
                run_s, wall_s = median(rows, "run_s"), median(rows, "wall_s")
                ratio = (
                    ""
                    if name == "steplog"
                    else (f"{run_s / ours_run:5.2f}x run, {wall_s / ours_wall:5.2f}x wall")
                )
                size = int(median(rows, "answer_bytes"))
                print(f"  {name:10} {run_s / n * 1e6:14,.0f} {wall_s:8.2f} {size:9}  {ratio}")
            report[str(n)] = {
                name: {k: median(rows, k) for k in ("run_s", "wall_s", "answer_bytes")}
                for name, rows in found.items()
            }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if os.environ.get("CI"):
        print("(figures on a CI machine shared with other work)")


if __name__ == "__main__":
    main()
