"""Load test of ``xrayage serve`` on loopback: N concurrent clients for T seconds.

Starts the server as a subprocess (so its memory is measured alone), sends the same
radiograph from ``--clients`` threads for ``--duration`` seconds, and reports p50/p99
latency, throughput, errors and the server's resident memory at the start and end of
the run. Not run in CI.

With ``--slow-clients N``, N more clients (from 127.0.0.2, another loopback address)
keep sending slow uploads the whole time: headers and 5 bytes of a declared 10 MB body,
then one byte a second, reconnecting when cut off. A probe thread also times
``GET /healthz`` twice a second. The figures then include how the slow uploads were
answered (408, 429) and the health-check latency.

Usage::

    python benchmarks/bench_serve_load.py [--model DIR] [--image FILE] [--clients 8]
        [--duration 30] [--workers 1] [--threads 2] [--heatmap] [--slow-clients 20]

Without ``--model`` it uses the bundled model, or else the tiny test model (which
measures the service overhead: reading, QC, HTTP, JSON). Without ``--image`` it uses
the NEMA chest CR from ``../shared/data`` (a 2.2 MB JPEG 2000 DICOM), or else a
synthetic chest DICOM.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
NEMA = ROOT.parent / "shared" / "data" / "dicom" / "nema_rg1_chest_cr_j2k_lossy.dcm"


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pick_model(arg: str | None, scratch: Path) -> tuple[str, str]:
    from xrayage.model import bundled_models

    if arg:
        return arg, arg
    if bundled_models():
        return bundled_models()[0], f"bundled {bundled_models()[0]}"
    sys.path.insert(0, str(ROOT))
    from tests.onnx_factory import build_tiny_model

    return str(build_tiny_model(scratch / "tiny")), "tiny test model (service overhead only)"


def pick_image(arg: str | None, scratch: Path) -> tuple[bytes, str]:
    if arg:
        return Path(arg).read_bytes(), arg
    if NEMA.is_file():
        return NEMA.read_bytes(), "NEMA chest CR (JPEG 2000, 2.2 MB)"
    sys.path.insert(0, str(ROOT))
    from tests.dicom_factory import make_dataset, to_bytes

    return to_bytes(make_dataset()), "synthetic chest DICOM"


def slow_upload(port: int, stop_at: float) -> int | None:
    """One slow upload (5 bytes, then a byte a second); the status it got, or None."""
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/"
            b"form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n--b\r\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(head)
            reply = b""
            while time.monotonic() < stop_at:
                try:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
                    if b"\r\n\r\n" in reply:
                        break
                except TimeoutError:
                    sock.sendall(b"x")
        except OSError:
            return None
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--image", default=None)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heatmap", action="store_true", help="ask for the heat map too")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--slow-clients", type=int, default=0,
                        help="clients that keep sending slow uploads meanwhile")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="xrayage-bench-"))
    model, model_label = pick_model(args.model, scratch)
    data, image_label = pick_image(args.image, scratch)
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen(
        [sys.executable, "-m", "xrayage.cli.main", "serve", "--model", model, "--port",
         str(port), "--workers", str(args.workers), "--threads", str(args.threads),
         "--max-queue", str(max(8, args.clients)),
         # the load clients all come from 127.0.0.1: let each act as its own address
         "--uploads-per-client", str(max(4, args.clients))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        fields = {"heatmap": "true"} if args.heatmap else {}
        with httpx.Client(base_url=url, timeout=120) as warm:  # first call loads lazily
            for _ in range(3):
                warm.post("/v1/predict", files={"file": ("x.dcm", data)}, data=fields)
        rss_start = rss_mb(server.pid)
        latencies: list[float] = []
        errors: dict[str, int] = {}
        rss_samples = [rss_start]
        lock = threading.Lock()
        stop_at = time.monotonic() + args.duration

        slow_statuses: dict[str, int] = {}
        health: list[float] = []

        def slow_client() -> None:
            while time.monotonic() < stop_at:
                key = str(slow_upload(port, stop_at))
                with lock:
                    slow_statuses[key] = slow_statuses.get(key, 0) + 1
                time.sleep(0.2)

        def probe() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while time.monotonic() < stop_at:
                    start = time.perf_counter()
                    c.get("/healthz")
                    health.append(time.perf_counter() - start)
                    time.sleep(0.5)

        def client() -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                while time.monotonic() < stop_at:
                    start = time.perf_counter()
                    try:
                        r = c.post("/v1/predict", files={"file": ("x.dcm", data)}, data=fields)
                        key = None if r.status_code == 200 else str(r.status_code)
                    except httpx.HTTPError as exc:
                        key = type(exc).__name__
                    with lock:
                        if key is None:
                            latencies.append(time.perf_counter() - start)
                        else:
                            errors[key] = errors.get(key, 0) + 1

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        threads += [threading.Thread(target=slow_client) for _ in range(args.slow_clients)]
        threads.append(threading.Thread(target=probe))
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(1.0)
            rss_samples.append(rss_mb(server.pid))
        elapsed = time.monotonic() - t0
        rss_end = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(20)

    n = len(latencies)
    figures = {
        "model": model_label, "image": image_label, "clients": args.clients,
        "duration_s": round(elapsed, 1), "workers": args.workers, "threads": args.threads,
        "heatmap": args.heatmap, "requests_ok": n, "errors": errors,
        "throughput_rps": round(n / elapsed, 2),
        "latency_ms": {"p50": round(1000 * percentile(latencies, 50), 1),
                       "p99": round(1000 * percentile(latencies, 99), 1),
                       "mean": round(1000 * statistics.fmean(latencies), 1),
                       "max": round(1000 * max(latencies), 1)} if n else None,
        "slow_clients": args.slow_clients, "slow_upload_answers": slow_statuses,
        "healthz_ms": {"p50": round(1000 * percentile(health, 50), 1),
                       "max": round(1000 * max(health), 1)} if health else None,
        "server_rss_mb": {"start": round(rss_start, 1), "end": round(rss_end, 1),
                          "max": round(max(rss_samples), 1),
                          "every_5_s": [round(v) for v in rss_samples[::5]]},
        "cpus": os.cpu_count(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
