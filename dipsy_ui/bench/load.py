"""``python -m dipsy_ui.bench.load``: several clients preview at once on the demo app, over
loopback; each client's wait is recorded (p50 / p95 in BENCHMARKS.md).

The app runs as ``python app.py --demo digits`` (``--world``) in its own process, as it would for a shared demo; each
client is a ``gradio_client.Client`` (one session each) that loads the demo digits, then all of
them ask for a preview at the same moment. The model lock runs one preview at a time, first come
first served, so the k-th client waits about k previews: the reference is one preview timed alone
on the same server just before (the median of three).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in (0, 1]): the smallest value that at least that
    share of ``values`` do not exceed."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def serve(workspace: Path, port: int, world: str) -> subprocess.Popen:
    """``app.py --demo WORLD`` on ``port``, started and answering."""
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--demo", world, "--workspace", str(workspace),
                               "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with code {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/config", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError("the app did not answer within 300 s")


def bench_load(clients: int, steps: int, port: int, world: str = "digits") -> dict:
    """Start the demo app, connect ``clients`` clients, time one preview alone, then all of them
    at once; returns the waits (seconds) and the failures."""
    from gradio_client import Client

    with tempfile.TemporaryDirectory() as workspace:
        server = serve(Path(workspace), port, world)
        try:
            url = f"http://127.0.0.1:{port}/"
            sessions = [Client(url, verbose=False, httpx_kwargs={"timeout": 600}) for _ in range(clients)]
            for client in sessions:
                table, *_ = client.predict(api_name="/load_demo")
            name = table["data"][0][0]  # a class of the demo world's data

            def preview(client, seed: int) -> str:
                *_, status = client.predict(name, 0, "sample", -1, 7.5, 6.0, 6.0, 0.6, steps, seed, True,
                                            api_name="/preview")  # fmt: skip
                return status

            preview(sessions[0], 0)  # loads the models: not part of any wait
            alone_times = []
            for seed in (1, 2, 3):
                start = time.perf_counter()
                preview(sessions[0], seed)
                alone_times.append(time.perf_counter() - start)
            alone = statistics.median(alone_times)

            waits: list[float | None] = [None] * clients
            failures: list[str] = []
            ready = threading.Barrier(clients)

            def run(index: int) -> None:
                ready.wait()
                start = time.perf_counter()
                try:
                    status = preview(sessions[index], 100 + index)
                    if "Done" not in status:
                        failures.append(f"client {index}: {status}")
                    waits[index] = time.perf_counter() - start
                except Exception as error:  # reported, not raised: every client's outcome counts
                    failures.append(f"client {index}: {error}")

            threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            server.terminate()
            server.wait(timeout=60)
    done = [wait for wait in waits if wait is not None]
    return {"clients": clients, "steps": steps, "alone": alone, "waits": done, "failures": failures}


def report(result: dict) -> str:
    waits, alone = result["waits"], result["alone"]
    lines = [f"{result['clients']} clients, one {result['steps']}-step preview each, all at once "
             f"({len(result['failures'])} failed)",  # fmt: skip
             f"one preview alone: {alone:.2f} s (median of 3)"]  # fmt: skip
    if waits:
        p50, p95 = percentile(waits, 0.5), percentile(waits, 0.95)
        lines += [f"wait p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(waits):.2f} s, mean {statistics.mean(waits):.2f} s",
                  f"p95 / (clients x alone) = {p95 / (result['clients'] * alone):.2f} (1: the lock's queue, no overhead)",
                  "waits (s): " + ", ".join(f"{wait:.2f}" for wait in sorted(waits))]  # fmt: skip
    lines += result["failures"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dipsy_ui.bench.load", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--steps", type=int, default=20, help="denoising steps of each preview (demo preset: 20)"
    )
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument(
        "--world", default="digits", help="the demo world (app.py --demo WORLD; default: digits)"
    )
    args = parser.parse_args(argv)
    result = bench_load(args.clients, args.steps, args.port, args.world)
    print(report(result))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
