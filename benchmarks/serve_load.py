"""Bounded load test of `caocrvfy serve`: throughput and p50/p99 latency per client count.

    caocrvfy serve --model models/captcha-6x62 --port 8000 &
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --images /tmp/fresh-6x62 --requests 200
    python benchmarks/serve_load.py --model models/captcha-6x62 --images /tmp/fresh-6x62   # starts the
        # server itself, once with server-side batching and once without, and compares them

Each level sends at most --requests requests from N concurrent clients (one image per request
unless --batch says more) and stops early at --time-cap seconds; the server must be on this
machine (loopback only). With --model, `--server-cpus 0` keeps the server it starts on core 0
and this load generator on the others, so that the two do not wait for each other's cores.
Files named LABEL_anything.png also give a full-match column. Prints a markdown table and
writes the rows to benchmarks/results/serve-load-DATE.json; exits 1 if any request failed.

Where the time goes: each answer's Server-Timing header (body, decode, queue, model, text) is
kept with its latency, and a second table splits the median request and the slowest 1% into
those parts; "outside" is what the client waited beyond them (the connection, the server's
event loop before and after the handler, the client's own loop).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

import common


def loopback_only(url: str) -> None:
    host = urlparse(url).hostname or ""
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(f"{url} is not a loopback address: this load test only targets this machine.")


def load_images(folder: Path, count: int) -> list[tuple[str, bytes]]:
    """The first `count` image files of the folder, sorted, as (name, bytes)."""
    from caocrvfy.inference import expand_inputs

    paths = expand_inputs([str(folder)])
    if not paths:
        raise SystemExit(f"{folder} has no images.")
    return [(p.name, p.read_bytes()) for p in paths[:count]]


async def level(url: str, images: list[tuple[str, bytes]], clients: int, requests: int, batch: int,
                time_cap: float) -> dict:
    import httpx2

    latencies: list[float] = []
    timings: list[dict] = []
    failures: list[str] = []
    right = read = 0
    next_request = 0
    start = time.perf_counter()

    async def client(http: httpx2.AsyncClient) -> None:
        nonlocal next_request, right, read
        while next_request < requests and time.perf_counter() - start < time_cap:
            i = next_request
            next_request += 1
            chosen = [images[(i * batch + k) % len(images)] for k in range(batch)]
            files = [("file", (name, data, "image/png")) for name, data in chosen]
            sent = time.perf_counter()
            try:
                response = await http.post(f"{url}/predict", files=files)
            except httpx2.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - sent)
            timings.append(parse_server_timing(response.headers.get("server-timing", "")))
            if response.status_code != 200:
                failures.append(f"{response.status_code}: {response.text[:200]}")
                continue
            for (name, _), p in zip(chosen, response.json()["predictions"]):
                read += 1
                right += "_" in name and p["text"] == name.split("_")[0]

    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"clients": clients, "requests": len(latencies) + len(failures), "failed": len(failures),
            "images_per_s": len(latencies) * batch / wall, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "wall": wall, "full_match": right / read if read else None,
            "first_failure": failures[0] if failures else None,
            "parts_p50": parts_of(latencies, timings, 0.45, 0.55), "parts_slowest_1pct": parts_of(latencies, timings, 0.99, 1.0)}


PARTS = ("body", "decode", "queue", "model", "text")


def parse_server_timing(header: str) -> dict:
    """'body;dur=0.4, batch;desc="3 images"' -> {"body": 0.4, "batch": 3} (ms; images)."""
    found = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, rest = part.partition(";")
        if rest.startswith("dur="):
            found[name] = float(rest[4:])
        elif rest.startswith('desc="'):
            found[name] = int(rest[6:].split()[0])
    return found


def parts_of(latencies: list[float], timings: list[dict], low: float, high: float) -> dict:
    """Mean parts (ms) of the requests whose latency lies between the `low` and `high` quantiles
    (0.45-0.55: around the median; 0.99-1.0: the slowest 1%), at least one request."""
    if not latencies:
        return {}
    order = np.argsort(latencies)
    start = min(int(low * len(order)), len(order) - 1)
    chosen = order[start:max(start + 1, int(high * len(order)))]
    rows = [timings[i] for i in chosen]
    mean = {name: float(np.mean([r.get(name, 0.0) for r in rows])) for name in (*PARTS, "batch")}
    mean["total"] = float(np.mean([latencies[i] * 1000 for i in chosen]))
    mean["outside"] = mean["total"] - sum(mean[name] for name in PARTS)
    return mean


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, extra: list[str], cpus: set[int] | None = None):
    """`caocrvfy serve` on a free loopback port (on `cpus` only, if given); returns (process,
    url) once /healthz answers."""
    import os
    import subprocess

    import httpx2

    port = free_port()
    cmd = common.module_command("caocrvfy", "serve", "--model", model, "--port", str(port), "--log-level", "warning",
                                *extra)
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin,
                            env=common.module_env())
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"{' '.join(cmd)} exited with {proc.returncode}")
        try:
            if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{' '.join(cmd)} did not answer within 2 minutes")


def split_cores(spec: str) -> set[int]:
    """The cores of SPEC (`0`, `0-1`, `0,2`) for the server; pins this process to the other ones."""
    import os

    cores = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    usable = os.sched_getaffinity(0)
    rest = usable - cores
    if not cores <= usable or not rest:
        raise SystemExit(f"--server-cpus {spec}: give some, not all, of this machine's cores "
                         f"{sorted(usable)}, so that the load generator has the others")
    os.sched_setaffinity(0, rest)
    return cores


def run_levels(url: str, images, args) -> list[dict]:
    if args.warmup:
        asyncio.run(level(url, images, 1, args.warmup, args.batch, args.time_cap))
    return [asyncio.run(level(url, images, int(n), args.requests, args.batch, args.time_cap))
            for n in args.clients.split(",")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="a loopback server (default http://127.0.0.1:8000)")
    p.add_argument("--model", help="start `caocrvfy serve --model MODEL` here instead, for each of --modes")
    p.add_argument("--modes", default="batched,unbatched",
                   help="with --model: server settings to compare, from batched (the default server), "
                        "unbatched (--no-batching), window-5ms (--batch-window-ms 5) (default batched,unbatched)")
    p.add_argument("--images", type=Path, required=True, help="folder of images to send")
    p.add_argument("--clients", default="1,8,32", help="concurrency levels (default 1,8,32)")
    p.add_argument("--requests", type=int, default=200, help="requests per level at most (default 200)")
    p.add_argument("--batch", type=int, default=1, help="images per request (default 1)")
    p.add_argument("--time-cap", type=float, default=20.0, help="seconds per level at most (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="requests sent before measuring (default 5)")
    p.add_argument("--server-cpus", help="with --model: the cores the server may run on, e.g. 0 or 0-1; the load "
                                         "generator then runs on the others (default: both on every core)")
    common.add_results_option(p)
    args = p.parse_args(argv)
    if args.server_cpus and not args.model:
        raise SystemExit("--server-cpus pins the server this benchmark starts: give --model too")
    server_cpus = split_cores(args.server_cpus) if args.server_cpus else None
    images = load_images(args.images, max(args.requests * args.batch, 1))
    modes = {"batched": [], "unbatched": ["--no-batching"], "window-5ms": ["--batch-window-ms", "5"]}
    rows = []
    if args.model:
        for mode in args.modes.split(","):
            proc, url = start_server(args.model, modes[mode], server_cpus)
            try:
                rows += [r | {"server": mode} for r in run_levels(url, images, args)]
            finally:
                proc.terminate()
                proc.wait(30)
    else:
        loopback_only(args.url)
        rows = [r | {"server": args.url} for r in run_levels(args.url, images, args)]
    print(f"{args.batch} image(s) per request, at most {args.requests} requests or {args.time_cap:.0f} s per level\n")
    print("| server | clients | requests | failed | images/s | p50 ms | p99 ms | full-match | wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        match = f"{r['full_match']:.3f}" if r["full_match"] is not None else "-"
        print(f"| {r['server']} | {r['clients']} | {r['requests']} | {r['failed']} | {r['images_per_s']:.1f} | "
              f"{r['p50']:.1f} | {r['p99']:.1f} | {match} | {r['wall']:.1f} |")
    print("\nWhere the time went (ms): requests around the median / the slowest 1%\n")
    print("| server | clients | " + " | ".join(PARTS) + " | outside | total | images per model call |")
    print("| --- | ---: |" + " ---: |" * (len(PARTS) + 3))
    for r in rows:
        mid, tail = r["parts_p50"], r["parts_slowest_1pct"]
        if not mid:
            continue
        cells = [f"{mid[n]:.1f} / {tail[n]:.1f}" for n in (*PARTS, "outside", "total", "batch")]
        print(f"| {r['server']} | {r['clients']} | " + " | ".join(cells) + " |")
    common.write_result("serve-load", {"model": args.model, "batch": args.batch, "requests": args.requests,
                                       "time_cap": args.time_cap, "server_cpus": args.server_cpus, "levels": rows},
                        args.results_dir)
    failed = [r for r in rows if r["failed"]]
    for r in failed:
        print(f"\n{r['clients']} clients: {r['failed']} failed, first: {r['first_failure']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
