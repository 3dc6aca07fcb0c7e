"""The retrieval service under load: 1...64 concurrent clients against one `stepopsd search serve`, loopback only.

    .venv/bin/python benchmarks/retrieval_load.py [--clients 1,2,4,8,16,32,64] [--seconds 4] [--batch 8]

The service runs in its own process (uvicorn, bm25s over the synthetic KB's corpus; `--max-inflight` as the CLI's
default, 32), so the load generator does not share its interpreter. Each level runs N asyncio clients for a fixed
time, each posting `--batch` queries per request back to back (a pool step of that many envs), without retrying:
a 503 (the service's bounded queue is full) is counted as refused, anything else non-200 or a transport error as an
error. Printed per level: requests/s and queries/s answered, p50 / p99 latency of answered requests, refused and
errors, and throughput as a ratio of the single-client level measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

from bench_env import setup  # benchmarks/ is sys.path[0] when a script here runs

ROOT = setup()


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--clients {text!r}: expected comma-separated integers") from None
    if not levels or any(n < 1 or n > 256 for n in levels):
        raise argparse.ArgumentTypeError(f"--clients {text!r}: each level must be in 1..256")
    return levels


async def drive(url: str, clients: int, seconds: float, batch: int, queries: list[str]) -> dict[str, float]:
    import httpx

    lat: list[float] = []
    counts = {"refused": 0, "errors": 0}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(k: int, http: httpx.AsyncClient) -> None:
        i = k
        while time.perf_counter() < deadline:
            body = {"queries": [queries[(i + j) % len(queries)] for j in range(batch)], "topk": 3}
            i += batch
            t0 = time.perf_counter()
            try:
                r = await http.post(url, json=body)
            except httpx.HTTPError:
                counts["errors"] += 1
                continue
            if r.status_code == 200:
                lat.append(time.perf_counter() - t0)
            elif r.status_code == 503:
                counts["refused"] += 1
                await asyncio.sleep(0.01)  # a real client would wait Retry-After; keep the pressure on
            else:
                counts["errors"] += 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    wall = time.perf_counter() - t0
    lat.sort()
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    return {"clients": clients, "rps": len(lat) / wall, "qps": len(lat) * batch / wall, "p50_ms": pick(0.5),
            "p99_ms": pick(0.99), "refused": counts["refused"], "errors": counts["errors"], "answered": len(lat)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=parse_levels, default=parse_levels("1,2,4,8,16,32,64"),
                    help="concurrency levels, comma-separated (default 1,2,4,8,16,32,64; each 1..256)")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per level (default 4; 0.5..60)")
    ap.add_argument("--batch", type=int, default=8, help="queries per request (default 8; 1..512)")
    ap.add_argument("--cache-dir", default="~/.cache/stepopsd", help="where the synthetic KB and its index live")
    args = ap.parse_args()
    if not 0.5 <= args.seconds <= 60:
        ap.error(f"--seconds {args.seconds}: must be in 0.5..60")
    if not 1 <= args.batch <= 512:
        ap.error(f"--batch {args.batch}: must be in 1..512")

    from envs.search.client import probe
    from envs.search.data import load_tasks
    from envs.search.synthetic import ensure_synthetic_kb
    from services.search.launcher import free_port

    _, qfile = ensure_synthetic_kb(args.cache_dir, 0)
    queries = [t.question for t in load_tasks(qfile)]
    port = free_port()
    url = f"http://127.0.0.1:{port}/retrieve"
    srv = subprocess.Popen([sys.executable, "-m", "services.cli", "search", "serve", "--synthetic", "--host", "127.0.0.1",
                            "--port", str(port), "--cache-dir", args.cache_dir], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while (health := probe(url, 0.5)) is None:
            if srv.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"retrieval_load: the service did not start: {(srv.stderr.read() or '')[-500:]}")
            time.sleep(0.2)
        print(f"service: {health['retriever']} over {health['name']} ({health['num_docs']} passages), max_inflight "
              f"{health['max_inflight']}, {args.batch} queries per request, {args.seconds:g} s per level, no retries")
        print(f"{'clients':>7} {'req/s':>8} {'queries/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'refused':>8} {'errors':>7} "
              f"{'x 1 client':>10}")
        base = None
        for n in args.clients:
            m = asyncio.run(drive(url, n, args.seconds, args.batch, queries))
            base = base or m["rps"] or None
            ratio = m["rps"] / base if base else float("nan")
            print(f"{n:>7} {m['rps']:>8.1f} {m['qps']:>10.0f} {m['p50_ms']:>8.1f} {m['p99_ms']:>8.1f} "
                  f"{m['refused']:>8} {m['errors']:>7} {ratio:>10.2f}", flush=True)
        h = probe(url, 2.0) or {}
        print(f"service counted {h.get('refused', '?')} refused (503) requests")
    finally:
        srv.terminate()
        srv.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
