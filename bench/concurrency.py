"""Many calls at once: 1,000 independent steps against a loopback server that answers after 200 ms.

    python bench/concurrency.py                 1,000 calls, 100 at once, 200 ms each
    python bench/concurrency.py --calls 300     fewer calls (the ideal shrinks with them)
    python bench/concurrency.py --serve ...     (internal) the server, in its own process

The server is a small asyncio HTTP/1.1 server (one process, no thread per request, keep-alive)
speaking the OpenAI chat-completions shape, started as its own process so its CPU never shares
steplog's core. In the same run, beside `steplog run` of a 1,000-step fan-out pipeline with
`max_concurrency = 100`:

- the ideal: ceil(calls / concurrency) x delay;
- raw httpx: one AsyncClient, a semaphore of 100, the same POST bodies, each answer's JSON parsed,
  with httpx's default pool limits and with limits equal to the concurrency;
- raw httpx through the httpx-aiohttp transport (aiohttp under httpx's API), which is what
  steplog's providers use (providers/client.py), with limits equal to the concurrency.

Each figure: the wall time of the calls (steplog: job.started -> job.succeeded, from its log),
and the CPU the process spent (user + system) per call. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# -- the server ---------------------------------------------------------------------------------


def completion_body(model: str, text: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
        }
    ).encode()


ANSWER = "steplog keeps every answer it paid for; " * 5  # ~200 bytes, as in the other benches


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Requests on one connection, in order, until the client closes it."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await reader.readexactly(length) if length else b""
            model = "bench"
            if body:
                try:
                    model = json.loads(body).get("model") or model
                except ValueError:
                    pass
            await asyncio.sleep(delay)
            answer = completion_body(model, ANSWER)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(answer)}\r\n\r\n".encode()
                + answer
            )
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port_file: Path, delay: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, delay), "127.0.0.1", 0, backlog=2048
    )
    port = server.sockets[0].getsockname()[1]
    scratch = port_file.with_suffix(".tmp")
    scratch.write_text(str(port))
    scratch.replace(port_file)  # never a partial number
    async with server:
        await server.serve_forever()


class Server:
    """The server as a subprocess on 127.0.0.1, stopped on exit."""

    def __init__(self, scratch: Path, delay: float) -> None:
        port_file = scratch / "port"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port_file), "--delay", str(delay)]
        )
        deadline = time.monotonic() + 10
        while not port_file.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit("the bench server did not start")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# -- the raw baselines --------------------------------------------------------------------------

RAW_CLIENT = r"""
import asyncio, json, os, resource, sys, time
import httpx
url, calls, concurrency, how = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def body(i):
    return {"model": "bench", "messages": [{"role": "user", "content": f"write part {i}"}],
            "max_tokens": 64}

async def main():
    kwargs = {}
    if how == "limits":
        kwargs["limits"] = httpx.Limits(max_connections=concurrency,
                                        max_keepalive_connections=concurrency)
    if how == "aiohttp":
        from httpx_aiohttp import AiohttpTransport
        kwargs["transport"] = AiohttpTransport(limits=httpx.Limits(
            max_connections=concurrency, max_keepalive_connections=concurrency))
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60, **kwargs) as client:
        async def one(i):
            async with gate:
                response = await client.post(url + "/chat/completions", json=body(i))
                response.raise_for_status()
                return response.json()["choices"][0]["message"]["content"]
        t0 = time.perf_counter()
        texts = await asyncio.gather(*(one(i) for i in range(calls)))
        wall = time.perf_counter() - t0
    assert len(texts) == calls
    return wall

before = resource.getrusage(resource.RUSAGE_SELF)
wall = asyncio.run(main())
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
print(json.dumps({"wall": wall, "cpu": cpu}))
"""


@dataclass
class Figure:
    name: str
    wall: float  # seconds for all the calls
    cpu: float  # seconds of the process's CPU (user + system)
    note: str = ""


def raw_client(python: Path | str, url: str, calls: int, concurrency: int, how: str) -> Figure:
    ran = subprocess.run(
        [str(python), "-c", RAW_CLIENT, url, str(calls), str(concurrency), how],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if ran.returncode != 0:
        raise RuntimeError(ran.stderr.strip().splitlines()[-1] if ran.stderr.strip() else "?")
    got = json.loads(ran.stdout.strip().splitlines()[-1])
    return Figure(f"raw httpx ({how})", got["wall"], got["cpu"])


# -- steplog ------------------------------------------------------------------------------------


def pipeline(url: str, calls: int, concurrency: int) -> str:
    lines = [
        'name = "many-calls"\n',
        "[providers.p]",
        'kind = "openai"',
        'model = "bench"',
        f'base_url = "{url}"',
        f"max_concurrency = {concurrency}",
        "timeout_s = 60",
        "max_retries = 0",
        "",
    ]
    for i in range(calls):
        lines += [f"[steps.s{i}]", 'provider = "p"', f'prompt = "write part {i}"', ""]
    return "\n".join(lines)


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def steplog_run(scratch: Path, url: str, calls: int, concurrency: int, name: str) -> Figure:
    work = scratch / name
    work.mkdir()
    pipe = work / "pipeline.toml"
    pipe.write_text(pipeline(url, calls, concurrency), encoding="utf-8")
    db = work / "steplog.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
    env["PYTHONPATH"] = str(ROOT)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    ran = subprocess.run(
        [sys.executable, "-m", "steplog", "--db", str(db), "run", str(pipe), "--job-id", "many"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    process_wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if ran.returncode != 0:
        tail = ran.stderr.strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"steplog run exited {ran.returncode}: {tail[0]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    conn = sqlite3.connect(db)
    try:
        rows = dict(
            conn.execute(
                "SELECT type, ts FROM events WHERE job_id = 'many'"
                " AND type IN ('job.started', 'job.succeeded')"
            ).fetchall()
        )
        responses = conn.execute(
            "SELECT count(*) FROM events WHERE job_id = 'many' AND type = 'llm.response'"
        ).fetchone()[0]
    finally:
        conn.close()
    wall = parse_ts(rows["job.succeeded"]) - parse_ts(rows["job.started"])
    note = f"{responses:,} llm.response; process {process_wall:.2f} s in all"
    return Figure("steplog run (job.started -> job.succeeded)", wall, cpu, note)


# -- the report ---------------------------------------------------------------------------------


def show(figure: Figure, ideal: float, calls: int) -> None:
    print(
        f"  {figure.name:<46} {figure.wall:7.2f} s  {figure.wall / ideal:5.2f}x ideal  "
        f"CPU {figure.cpu:6.2f} s = {figure.cpu / calls * 1e6:7,.0f} µs/call  {figure.note}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.delay))
        return
    ideal = math.ceil(args.calls / args.concurrency) * args.delay
    print(
        f"{args.calls:,} calls, {args.concurrency} at once, the server answers after "
        f"{args.delay * 1000:.0f} ms: ideal {ideal:.2f} s"
    )
    with tempfile.TemporaryDirectory() as tmp, Server(Path(tmp), args.delay) as server:
        figures: list[Figure] = []
        for how in ("default", "limits", "aiohttp"):
            figures.append(
                raw_client(sys.executable, server.url, args.calls, args.concurrency, how)
            )
            show(figures[-1], ideal, args.calls)
        # the same process with one call: its start-up and the job's fixed cost, subtracted
        # below so the per-call CPU is the calls' own
        alone = steplog_run(Path(tmp), server.url, 1, args.concurrency, "steplog-one-call")
        ours = steplog_run(Path(tmp), server.url, args.calls, args.concurrency, "steplog")
        show(ours, ideal, args.calls)
        client = figures[-1]  # raw httpx over aiohttp: the client steplog's providers use
        per_call = (ours.cpu - alone.cpu) / (args.calls - 1)
        print(
            f"  steplog CPU per call, start-up ({alone.cpu:.2f} s for a one-call run) left "
            f"out: {per_call * 1e6:,.0f} µs, of which the HTTP client's (the raw aiohttp "
            f"line) {client.cpu / args.calls * 1e6:,.0f} µs and steplog's own "
            f"{(per_call - client.cpu / args.calls) * 1e6:,.0f} µs"
        )


if __name__ == "__main__":
    main()
