#!/usr/bin/env python3
"""Hostile probes against a `switchyard` binary, as an attacker would run them (a hostile client and a scripted
misbehaving upstream, on loopback). Each probe prints one line of results; run it for two binaries to compare.

    bench/hostile --bin .build/release/switchyard [--probe crash,extra,slowloris,memory,stall,streams]
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import http.client

# ----------------------------------------------------------------------------------------------------------------
# The gateway under test


class Gateway:
    def __init__(self, binary, config=None, args=()):
        cmd = [binary, "serve", "--port", "0", "--no-embeddings", "--log-level", "critical", *args]
        self.config_file = None
        if config is not None:
            self.config_file = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
            self.config_file.write(config)
            self.config_file.close()
            cmd = [binary, "serve", "--config", self.config_file.name, "--no-embeddings", "--log-level", "critical", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.port = None
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            raise RuntimeError("gateway did not start")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for _ in self.proc.stdout:
            pass

    def alive(self):
        return self.proc.poll() is None

    def rss_kb(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return 0
        return 0

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.config_file:
            os.unlink(self.config_file.name)


def request(port, path, body=None, headers=None, method="POST", timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"content-type": "application/json"}
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    except Exception as e:  # a dead gateway, a reset
        return None, str(e)
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------------------------------
# A scripted upstream: answers by the marker in the prompt (`probe-NAME`), in raw bytes.


def completion(marker, usage='{"prompt_tokens":10,"completion_tokens":5}', extra_headers=""):
    body = ('{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant",'
            f'"content":"answer-{marker}"}},"finish_reason":"stop"}}],"usage":{usage}}}')
    return (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra_headers}content-length: {len(body)}\r\n\r\n{body}").encode()


def chunk(text):
    data = text.encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def stream(usage):
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    ev = lambda d: chunk(f"data: {d}\n\n")
    return (head + ev('{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}')
            + ev('{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}')
            + ev('{"id":"c","object":"chat.completion.chunk","model":"m","choices":[],"usage":' + usage + '}')
            + ev("[DONE]") + b"0\r\n\r\n")


def error(status, header):
    body = '{"error":{"message":"slow down","type":"rate_limit_error"}}'
    return f"HTTP/1.1 {status} Busy\r\ncontent-type: application/json\r\n{header}\r\ncontent-length: {len(body)}\r\n\r\n{body}".encode()


class Upstream:
    """`script(marker, index, stream, request_id)` returns a list of byte strings and float pauses (seconds)."""

    def __init__(self, script):
        self.script = script
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, rest = buf.split(b"\r\n\r\n", 1)
                length = 0
                rid = None
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                    if name.strip().lower() == b"x-request-id":
                        rid = value.strip().decode()
                while len(rest) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    rest += data
                body, buf = rest[:length], rest[length:]
                m = re.search(rb"probe-([A-Za-z0-9_.-]+)", body)
                marker = m.group(1).decode() if m else ""
                with self.lock:
                    index = self.count
                    self.count += 1
                for step in self.script(marker, index, b'"stream":true' in body, rid):
                    if isinstance(step, float):
                        time.sleep(step)
                    else:
                        conn.sendall(step)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def config_with(upstream_port, extra=""):
    return f"""listen: {{host: 127.0.0.1, port: 0}}
providers:
  hostile: {{kind: openai-compatible, base_url: "http://127.0.0.1:{upstream_port}"}}
  mock: {{kind: mock}}
models:
  h: {{provider: hostile, upstream_model: m, exact_cache: false, semantic_cache: false, price: {{input: "2.50", output: "10"}}}}
  gpt-4o-mini: {{provider: mock}}
{extra}"""


def body(marker, stream=False, extra=""):
    return json.dumps({"model": "h", "max_tokens": 10, "stream": stream,
                       "messages": [{"role": "user", "content": f"probe-{marker}"}]})


# ----------------------------------------------------------------------------------------------------------------
# Probes


def probe_crash(binary):
    """Single requests that trapped: bad retry-after, overflowing or negative usage, the savings window, mock seeds."""
    retry = ["retry-after: nan", "retry-after: inf", "retry-after: 1e20", "retry-after-ms: nan", "retry-after: 9223372037"]
    usages = ['{"prompt_tokens":4000000000,"completion_tokens":1}',
              '{"prompt_tokens":9223372036854775807,"prompt_tokens_details":{"cached_tokens":-5},"completion_tokens":1}',
              '{"prompt_tokens":10,"completion_tokens":-5000000}']

    def script(marker, index, is_stream, rid):
        kind, _, n = marker.partition("_")
        if kind == "retry":
            return [error(429, retry[int(n)])]
        if kind == "usage":
            return [stream(usages[int(n)])] if is_stream else [completion(marker, usages[int(n)])]
        return [completion(marker)]

    upstream = Upstream(script)
    cases = [("retry_%d" % i, lambda g, i=i: request(g.port, "/v1/chat/completions", body("retry_%d" % i))) for i in range(len(retry))]
    for i in range(len(usages)):
        for s in (False, True):
            cases.append((f"usage_{i}{' stream' if s else ''}",
                          lambda g, i=i, s=s: request(g.port, "/v1/chat/completions", body(f"usage_{i}", stream=s))))
    cases.append(("savings to=-2^63", lambda g: request(g.port, "/v1/usage/savings?to=-9223372036854775808", method="GET")))
    cases.append(("mock seed 2^63-1", lambda g: request(g.port, "/v1/chat/completions", json.dumps(
        {"model": "gpt-4o-mini", "max_tokens": 5, "seed": 9223372036854775807, "messages": [{"role": "user", "content": "hi"}]}))))
    results = []
    for name, send in cases:
        gateway = Gateway(binary, config_with(upstream.port))
        try:
            status, _ = send(gateway)
            time.sleep(0.3)
            results.append(f"{name}: {status} {'alive' if gateway.alive() else 'DIED'}")
        finally:
            gateway.stop()
    upstream.close()
    died = sum("DIED" in r for r in results)
    print(f"crash: {len(results) - died} of {len(results)} single requests survived; " + "; ".join(results))


def load_wrong_answers(port, seconds=4, concurrency=32, tenants=4):
    stop = time.time() + seconds
    totals = {"ok": 0, "wrong": 0, "other_tenant": 0, "failed": 0}
    lock = threading.Lock()

    def worker(w):
        conns = {}
        n = 0
        while time.time() < stop:
            tenant = (w + n) % tenants
            marker = f"t{tenant}-w{w}-n{n}"
            n += 1
            conn = conns.get(tenant) or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conns[tenant] = conn
            try:
                conn.request("POST", "/v1/chat/completions", body=body(marker),
                             headers={"content-type": "application/json", "authorization": f"Bearer tenant-{tenant}"})
                r = conn.getresponse()
                text = r.read().decode("utf-8", "replace")
            except Exception:
                conns.pop(tenant, None)
                with lock:
                    totals["failed"] += 1
                continue
            with lock:
                if r.status != 200:
                    totals["failed"] += 1
                elif f"answer-{marker}\"" in text:
                    totals["ok"] += 1
                else:
                    totals["wrong"] += 1
                    m = re.search(r"answer-t(\d+)-", text)
                    if m and int(m.group(1)) != tenant:
                        totals["other_tenant"] += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return totals


def probe_extra(binary):
    """An upstream that sends one answer too many on a keep-alive connection, under load from four tenants."""
    for mode in ("same-write", "after-5ms", "after-5ms, x-request-id echoed", "after-5ms, keep_alive: false"):
        def script(marker, index, is_stream, rid, mode=mode):
            # As vLLM with --enable-request-id-headers does: the answer carries the request's id.
            echo = f"x-request-id: {rid}\r\n" if "echoed" in mode and rid else ""
            answer = completion(marker, extra_headers=echo)
            if index % 3 != 0:
                return [answer]
            extra = completion(f"extra-{index}", extra_headers=echo)
            return [answer + extra] if mode == "same-write" else [answer, 0.005, extra]
        upstream = Upstream(script)
        config = config_with(upstream.port)
        if "keep_alive" in mode:
            config = config.replace('base_url: "http://', 'keep_alive: false, base_url: "http://')
        gateway = Gateway(binary, config)
        try:
            totals = load_wrong_answers(gateway.port)
            total = sum(totals.values()) - totals["other_tenant"]
            print(f"extra answer ({mode}): {totals['wrong']} of {total} answers were another request's, "
                  f"{totals['other_tenant']} another tenant's; {totals['failed']} failed; {totals['ok']} right")
        finally:
            gateway.stop()
            upstream.close()


def probe_slowloris(binary, connections=500, wait=12.0):
    """Connections that send a partial head and then nothing; does the gateway close them, and serve others?"""
    gateway = Gateway(binary)
    try:
        socks = []
        for _ in range(connections):
            s = socket.create_connection(("127.0.0.1", gateway.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: a")
            s.setblocking(False)
            socks.append(s)
        started = time.time()
        status, _ = request(gateway.port, "/healthz", method="GET", timeout=10)
        served = time.time() - started
        time.sleep(wait)
        closed = 0
        for s in socks:
            try:
                data = s.recv(4096)
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
            s.close()
        print(f"slowloris: {closed} of {connections} partial-head connections closed by the gateway within {wait:.0f} s; "
              f"a normal request meanwhile: {status} in {served * 1000:.1f} ms")
    finally:
        gateway.stop()


def probe_memory(binary, clients=20, size=32 * 1024 * 1024 - 4096):
    """20 concurrent maximum-size chat bodies through the embedded default: peak RSS."""
    gateway = Gateway(binary, args=["--mock-latency-scale", "0"])
    try:
        text = "a" * (size - 200)
        payload = json.dumps({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": text}]}).encode()
        idle = gateway.rss_kb()
        peak = [idle]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], gateway.rss_kb())
                time.sleep(0.02)

        statuses = []
        lock = threading.Lock()

        def client():
            status, _ = request(gateway.port, "/v1/chat/completions", payload, timeout=120)
            with lock:
                statuses.append(status)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.time()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - started
        done.set()
        sampler.join()
        counts = {s: statuses.count(s) for s in set(statuses)}
        print(f"memory: {clients} concurrent {size / 2**20:.0f} MiB bodies: RSS {idle / 1024:.0f} MB idle, peak "
              f"{peak[0] / 1024:.0f} MB; answers {counts} in {elapsed:.1f} s; alive: {gateway.alive()}")
    finally:
        gateway.stop()


def probe_stall(binary, messages=200_000):
    """One 6.8 MB request of 200,000 messages: how long does /healthz wait on other connections meanwhile?"""
    gateway = Gateway(binary, args=["--mock-latency-scale", "0"])
    try:
        msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hello there"} for i in range(messages)]
        payload = json.dumps({"model": "gpt-4o-mini", "max_tokens": 5, "messages": msgs}).encode()
        result = {}

        def big():
            result["status"], _ = request(gateway.port, "/v1/chat/completions", payload, timeout=120)

        probes = [http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30) for _ in range(8)]
        t = threading.Thread(target=big)
        t.start()
        slowest = 0.0
        rounds = 0
        while t.is_alive():
            for c in probes:
                started = time.time()
                c.request("GET", "/healthz")
                c.getresponse().read()
                slowest = max(slowest, time.time() - started)
            rounds += 1
            time.sleep(0.01)
        t.join()
        print(f"stall: a {len(payload) / 1e6:.1f} MB request of {messages:,} messages answered {result.get('status')}; "
              f"slowest /healthz on 8 other connections meanwhile: {slowest * 1000:.0f} ms ({rounds} rounds)")
    finally:
        gateway.stop()


def probe_streams(binary, users=2000, seconds=20):
    """2,000 concurrent streams through the embedded default (mock at latency scale 3), via `switchyard load`."""
    gateway = Gateway(binary, args=["--mock-latency-scale", "3"])
    try:
        out = subprocess.run([binary, "load", "--url", f"http://127.0.0.1:{gateway.port}", "--stream", "--users", str(users),
                              "--duration", str(seconds), "--model", "gpt-4o-mini"], capture_output=True, text=True, timeout=seconds + 120)
        lines = [l for l in out.stdout.splitlines() if l.startswith(("requests:", "time to first token", "latency", "errors"))]
        print(f"streams ({users} users, {seconds} s): " + " | ".join(lines))
    finally:
        gateway.stop()


PROBES = {"crash": probe_crash, "extra": probe_extra, "slowloris": probe_slowloris, "memory": probe_memory,
          "stall": probe_stall, "streams": probe_streams}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--probe", default=",".join(PROBES))
    args = parser.parse_args()
    for name in args.probe.split(","):
        PROBES[name](args.bin)
        sys.stdout.flush()
