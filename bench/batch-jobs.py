#!/usr/bin/env python3
"""P2 jobs sent alone against P2 jobs through the mock's batch APIs, in the same run: what they cost, how many
upstream calls and batches they took, and how long the backlog took to finish.

    bench/batch-jobs.py --bin .build/release/switchyard [--jobs 200] [--latency-scale 0.05]
"""
import argparse
import concurrent.futures
import json
import os
import re
import sys
import time
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import Gateway, request  # noqa: E402

CONFIG = """
mock_latency_scale: {scale}
providers: {{mock: {{kind: mock}}}}
models:
  gpt-4o-mini: {{provider: mock, batch: {policy}}}
  claude-haiku-4-5: {{provider: mock, batch: {policy}}}
jobs:
  workers: 8
  poll_interval_seconds: 0.05
  batch: {{window_seconds: 2, poll_seconds: 0.5, max_requests: 1000}}
"""


def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(binary, policy, jobs, scale):
    gateway = Gateway(binary, CONFIG.format(policy=policy, scale=scale))
    try:
        started = time.time()
        def submit(index):
            model = "claude-haiku-4-5" if index % 2 else "gpt-4o-mini"
            endpoint = "/v1/messages" if index % 2 else "/v1/chat/completions"
            body = {"endpoint": endpoint, "priority": "p2",
                    "request": {"model": model, "max_tokens": 200,
                                "messages": [{"role": "user", "content": f"Summarise report number {index} in a paragraph."}]}}
            status, answer = request(gateway.port, "/v1/jobs", json.dumps(body), {"authorization": "Bearer bench"})
            assert status == 202, answer
            return json.loads(answer)["id"]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(submit, range(jobs)))
        cost, done, failed = Decimal(0), set(), 0
        deadline = time.time() + 600
        while len(done) < len(ids) and time.time() < deadline:
            for job_id in ids:
                if job_id in done:
                    continue
                _, answer = request(gateway.port, f"/v1/jobs/{job_id}", None, {"authorization": "Bearer bench"}, method="GET")
                job = json.loads(answer)
                if job["status"] in ("completed", "failed", "cancelled"):
                    done.add(job_id)
                    failed += job["status"] != "completed"
                    cost += Decimal(job.get("cost_usd", "0"))
            time.sleep(0.2)
        elapsed = time.time() - started
        _, metrics = request(gateway.port, "/metrics", None, {}, method="GET")
        return {"policy": policy, "jobs": len(ids), "ended": len(done), "failed": failed, "cost_usd": cost, "seconds": elapsed,
                "batches": metric(metrics, 'switchyard_batches_total{result="submitted"}'),
                "batched": metric(metrics, 'switchyard_batch_requests_total{outcome="answered"}'),
                "saved_usd": Decimal(int(metric(metrics, "switchyard_batch_saved_nano_usd_total"))) / Decimal(10**9)}
    finally:
        gateway.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=".build/release/switchyard")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--latency-scale", type=float, default=0.05)
    args = parser.parse_args()
    alone = run(args.bin, "never", args.jobs, args.latency_scale)
    batched = run(args.bin, "auto", args.jobs, args.latency_scale)
    for row in (alone, batched):
        print(f"batch: {row['policy']:5}  jobs {row['jobs']}  ended {row['ended']}  failed {row['failed']}  "
              f"cost ${row['cost_usd']}  batches {int(row['batches'])}  answered by batch {int(row['batched'])}  "
              f"saved ${row['saved_usd']}  all ended after {row['seconds']:.1f} s")
    if alone["cost_usd"] > 0:
        print(f"cost ratio batched / alone: {batched['cost_usd'] / alone['cost_usd']:.3f}")


if __name__ == "__main__":
    main()
