"""Several gateway instances behind nginx, sharing one redis-server: what a team runs when it scales out.

Run by scripts/cluster-test.sh (after the gateway is built and the SDK venv exists). Each class starts its own
cluster with scripts/cluster.sh in a temporary folder and stops it afterwards; the classes that kill things get a
cluster of their own, so a failure in one never leaks into another.
"""

import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import openai

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BIN = os.environ.get("SWITCHYARD_BIN", os.path.join(ROOT, ".build", "debug", "switchyard"))
CLUSTER = os.path.join(ROOT, "scripts", "cluster.sh")
KEY = "sk-cluster-test"
ADMIN_KEY = "sk-cluster-admin"


class Cluster:
    def __init__(self, instances=3, extra=None, model_options="", mock_args="", mock_latency=None):
        """`extra`: configuration appended to every instance's (keys, limits), as scripts/cluster.sh's GATEWAY_EXTRA;
        `model_options` and `mock_args` as its GATEWAY_MODEL_OPTIONS and MOCK_ARGS."""
        self.dir = tempfile.mkdtemp(prefix="switchyard-cluster-")
        env = dict(os.environ, SWITCHYARD_BIN=BIN, GATEWAY_MODEL_OPTIONS=model_options, MOCK_ARGS=mock_args,
                   SWITCHYARD_ADMIN_KEY=ADMIN_KEY)
        if mock_latency is not None:
            env["MOCK_LATENCY_SCALE"] = str(mock_latency)
        if extra:
            path = os.path.join(self.dir, "extra.yaml")
            with open(path, "w") as file:
                file.write(extra)
            env["GATEWAY_EXTRA"] = path
        try:
            subprocess.run([CLUSTER, "start", self.dir, str(instances)], check=True, env=env, timeout=300,
                           stdout=subprocess.DEVNULL)
        except BaseException:
            self.stop()
            raise
        self.read_env()

    def read_env(self):
        values = {}
        with open(os.path.join(self.dir, "cluster.env")) as file:
            for line in file:
                name, _, value = line.strip().partition("=")
                values[name] = value.strip('"')
        self.nginx_port = int(values["NGINX_PORT"])
        self.nginx = f"http://127.0.0.1:{self.nginx_port}"
        self.instances = [f"http://127.0.0.1:{port}" for port in values["INSTANCE_PORTS"].split()]
        self.pids = [int(pid) for pid in values["INSTANCE_PIDS"].split()]
        self.redis_port = int(values["REDIS_PORT"])
        self.mock = f"http://127.0.0.1:{values['MOCK_PORT']}"
        self.redis_pid = int(values["REDIS_PID"])

    def stop(self):
        subprocess.run([CLUSTER, "stop", self.dir], timeout=120, stdout=subprocess.DEVNULL)
        if os.environ.get("KEEP_CLUSTER_LOGS"):
            print(f"cluster logs kept in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def chat(base, content, headers=None, timeout=30, max_tokens=20):
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": content}]}).encode()
    request = urllib.request.Request(base + "/v1/chat/completions", data=body, method="POST",
                                     headers={"authorization": f"Bearer {KEY}", "content-type": "application/json",
                                              **(headers or {})})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, dict(response.headers), json.loads(response.read())


def until_exact_hit(base, question, timeout=3):
    """The exact entry is stored in the background, after the answer was sent (and the semantic copy may come
    first): ask until it is a hit-exact or the time is up, and return the last answer's headers and body."""
    deadline = time.time() + timeout
    while True:
        _, headers, body = chat(base, question)
        if headers.get("x-switchyard-cache") == "hit-exact" or time.time() > deadline:
            return headers, body
        time.sleep(0.02)


def get(base, path, timeout=5, admin=False):
    request = urllib.request.Request(base + path, headers={"authorization": f"Bearer {ADMIN_KEY if admin else KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def load(url, seconds, users, stream=True, extra=()):
    """Runs the project's load harness; returns its JSON result and the process (already started)."""
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False)
    out.close()
    process = subprocess.Popen([BIN, "load", "--url", url, "--users", str(users), "--duration", str(seconds),
                                "--api-key", KEY, "--json", out.name, *(["--stream"] if stream else []), *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, out.name


def load_result(process, path, timeout=120):
    process.wait(timeout=timeout)
    with open(path) as file:
        result = json.load(file)
    os.unlink(path)
    return result


def report(name, result):
    """What a run did, on stderr beside the test's name (the figures the README quotes)."""
    print(f"\n  {name}: {result['succeeded']} succeeded, errors {result['errors']}, cache {result['cache']}, "
          f"p50 {result['latency_ms'].get('p50', 0):.0f} ms", file=sys.stderr)


def wait_exit(pid, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            finished, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            # Not our child (started by the script): poll its existence.
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
            continue
        if finished:
            return True
        time.sleep(0.05)
    return False


class SharedState(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster()

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def test_exact_answer_cached_through_one_instance_is_a_hit_through_another(self):
        a, b, _ = self.cluster.instances
        question = f"Which instance answered this question first? {time.time_ns()}"
        status, headers, first = chat(a, question)
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("x-switchyard-cache"), "miss")
        headers, again = until_exact_hit(b, question)
        self.assertEqual(headers.get("x-switchyard-cache"), "hit-exact")
        self.assertEqual(again["choices"][0]["message"]["content"], first["choices"][0]["message"]["content"])
        _, headers, _ = chat(self.cluster.nginx, question)
        self.assertEqual(headers.get("x-switchyard-cache"), "hit-exact")

    def test_semantic_entry_written_through_one_instance_hits_through_another_within_a_second(self):
        a, _, c = self.cluster.instances
        # The model is uncased: both texts are the same tokens but for the question mark, so cosine ≈ 1 and the
        # exact keys differ.
        _, headers, first = chat(a, "How do I change the billing address on my team account?")
        self.assertEqual(headers.get("x-switchyard-cache"), "miss")
        written = time.monotonic()
        hit = None
        while time.monotonic() - written < 5:
            _, headers, body = chat(c, "how do i change the billing address on my team account")
            if headers.get("x-switchyard-cache") == "hit-semantic":
                hit = time.monotonic() - written
                break
            time.sleep(0.02)
        self.assertIsNotNone(hit, "no semantic hit through C within 5 s")
        self.assertEqual(body["choices"][0]["message"]["content"], first["choices"][0]["message"]["content"])
        # The stated lag (README): a second, including the request that found it.
        self.assertLess(hit, 1.0)

    def test_savings_are_the_same_from_every_instance(self):
        a, b, c = self.cluster.instances
        question = f"What does each lever save? {time.time_ns()}"
        chat(a, question)
        self.assertEqual(until_exact_hit(b, question)[0].get("x-switchyard-cache"), "hit-exact")
        for instance in (c, a):
            self.assertEqual(chat(instance, question)[1].get("x-switchyard-cache"), "hit-exact")
        # Written off the request path (this test's and the earlier tests' answers): read until every instance's
        # report counts the three hits and the three agree, which they must once the writes have landed.
        deadline = time.time() + 5
        while True:
            reports = [get(instance, "/v1/usage/savings") for instance in self.cluster.instances]
            parsed = [json.loads(body) for status, body in reports]
            self.assertTrue(all(status == 200 for status, _ in reports))
            exact = [sum(tenant["exact"]["requests"] for tenant in report["tenants"]) for report in parsed]
            for report in parsed:
                # The period ends now, as each instance saw it.
                report.pop("to")
                report.pop("from")
            settled = all(count >= 3 for count in exact) and parsed[0] == parsed[1] == parsed[2]
            if settled or time.time() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(parsed[0], parsed[1])
        self.assertEqual(parsed[0], parsed[2])
        self.assertGreaterEqual(exact[0], 3)

    def test_500_concurrent_streams_through_the_balancer_all_complete(self):
        count = 500
        started = threading.Barrier(count, timeout=60)

        def one(index):
            # Plain http.client, so that nothing of the project's own client is between the test and nginx.
            connection = http.client.HTTPConnection("127.0.0.1", self.cluster.nginx_port, timeout=120)
            try:
                started.wait()
                body = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 60,
                                   "messages": [{"role": "user", "content": f"Stream number {index}, please."}]})
                connection.request("POST", "/v1/chat/completions", body=body,
                                   headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
                response = connection.getresponse()
                if response.status != 200:
                    return f"status {response.status}"
                events, done, finish = 0, False, None
                for raw in response:
                    line = raw.decode().strip()
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        continue
                    events += 1
                    for choice in json.loads(line[6:]).get("choices", []):
                        finish = choice.get("finish_reason") or finish
                return None if done and finish and events > 1 else f"cut: {events} events, done {done}, {finish}"
            except Exception as error:  # noqa: BLE001 - every failure is reported by the assertion below
                return repr(error)
            finally:
                connection.close()

        with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
            results = list(pool.map(one, range(count)))
        failures = [result for result in results if result is not None]
        self.assertEqual(failures, [], f"{len(failures)} of {count} streams failed")

    def test_official_sdk_through_the_balancer(self):
        client = openai.OpenAI(base_url=self.cluster.nginx + "/v1", api_key=KEY, max_retries=0)
        stream = client.chat.completions.create(model="gpt-4o-mini", max_tokens=10, stream=True,
                                                messages=[{"role": "user", "content": "Through nginx?"}])
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        self.assertTrue(text)


class LimitsAcrossInstances(unittest.TestCase):
    """Limits kept in Redis hold for the instances together: N admitted of a limit of N, whichever instance each
    request reaches, with settlement giving back what a reservation did not use."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster(extra="""
cache: {exact: {enabled: false}, semantic: {enabled: false}}
limits:
  - {name: across, requests: 60, per: hour, scope: [tenant], when: {feature: [requests-test]}}
  - {name: across-tokens, total_tokens: 30000, per: hour, scope: [tenant], when: {feature: [tokens-test]}}
""")

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def hammer(self, feature, count, max_tokens, workers=60):
        """`count` requests, `workers` at a time, in turn through each instance; their statuses and usages."""
        instances = self.cluster.instances

        def one(index):
            try:
                status, _, body = chat(instances[index % len(instances)], f"Request {index} of the {feature} burst",
                                       headers={"x-switchyard-feature": feature}, max_tokens=max_tokens)
                return status, body.get("usage", {})
            except urllib.error.HTTPError as error:
                return error.code, {}

        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, range(count)))

    def test_exactly_the_limit_is_admitted_through_three_instances(self):
        results = self.hammer("requests-test", 300, 10)
        statuses = [status for status, _ in results]
        self.assertEqual(statuses.count(200), 60, statuses)
        self.assertEqual(statuses.count(429), 240)

    def test_a_token_limit_is_not_exceeded_through_three_instances(self):
        # Each reserves its prompt estimate plus 500 and uses less; ten at a time, so the answers' real usage (not
        # the reservations in flight) fills the limit. Kept per instance, three times the limit would be used.
        results = self.hammer("tokens-test", 600, 500, workers=10)
        used = sum(usage.get("total_tokens", 0) for status, usage in results if status == 200)
        admitted = sum(1 for status, _ in results if status == 200)
        self.assertGreater(admitted, 0)
        self.assertLess(admitted, 600)
        self.assertGreater(used, 30000 * 0.8, "the limit was never approached: the test shows nothing")
        # The estimate of an input is its bytes / 4; the mock counts words and punctuation, a little more here: the
        # limit is exceeded at most by that difference over the requests admitted.
        self.assertLessEqual(used, 30000 + admitted * 8, f"{used} tokens used by {admitted} answers")
        print(f"\n  tokens: {admitted} admitted of 600, {used} tokens used of a 30,000 limit")


class BudgetsAcrossInstances(unittest.TestCase):
    """A deployment's budget kept in Redis holds for the instances together: the mock, limited to 60 requests a
    minute, never refuses, and its 60 (and what comes back meanwhile) are sent whichever instance each request
    reaches: the corrections from the mock's rate-limit headers do not count a request twice."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster(extra="cache: {exact: {enabled: false}, semantic: {enabled: false}}\n"
                                    "resilience: {retries: {budget_seconds: 0.5}}\n"
                                    # Refused rather than queued for long: the burst and what comes back within 0.5 s.
                                    "admission: {deadlines: {p0_seconds: 0.5}}\n",
                              model_options=", budget: {rpm: 60}", mock_args="--rpm 60")

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def test_three_instances_together_never_cause_a_provider_429(self):
        instances = self.cluster.instances

        def one(index):
            try:
                status, _, _ = chat(instances[index % len(instances)], f"Budget request {index}")
                return status, ""
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode(errors="replace")

        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
            results = list(pool.map(one, range(150)))
        elapsed = time.time() - started
        statuses = [status for status, _ in results]
        # 60 at once, then one a second comes back while the burst lasts: all of it used, none of it twice.
        self.assertGreaterEqual(statuses.count(200), 60, statuses)
        self.assertLessEqual(statuses.count(200), 60 + int(elapsed) + 1, f"{statuses} in {elapsed:.1f} s")
        self.assertEqual(statuses.count(200) + statuses.count(429), 150, statuses)
        upstream = [body for status, body in results if status == 429 and "budget" not in body]
        self.assertEqual(upstream, [], "refusals that did not come from the gateway's budget")


class BreakersAcrossInstances(unittest.TestCase):
    """A deployment that fails opens the breaker of the instance that saw it, and through the shared board every
    other instance's: they refuse it without sending it a request, and /v1/deployments says so."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster(extra="cache: {exact: {enabled: false}, semantic: {enabled: false}}\n"
                                    "resilience: {breaker: {minimum_attempts: 4, failure_ratio: 0.5, open_seconds: 30}}\n",
                              mock_args="--fault-rate 500=1")

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()

    def test_one_instance_opening_a_breaker_opens_it_everywhere(self):
        first, others = self.cluster.instances[0], self.cluster.instances[1:]

        def status(base, index):
            try:
                return chat(base, f"Breaker request {index}")[0], ""
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode(errors="replace")

        # The mock fails every request: four failures on the first instance open its breaker.
        for index in range(4):
            code, body = status(first, index)
            self.assertGreaterEqual(code, 500, body)
        sent = json.loads(urllib.request.urlopen(self.cluster.mock + "/mock/stats", timeout=5).read())["requests"]
        time.sleep(1)  # the board is read every 250 ms
        for number, base in enumerate(others):
            code, body = status(base, 100 + number)
            self.assertEqual(code, 503, body)
            self.assertIn("circuit open", body)
            code, report = get(base, "/v1/deployments", admin=True)
            self.assertEqual(code, 200, report)
            self.assertIn('"circuit":"open"', report.decode())
        after = json.loads(urllib.request.urlopen(self.cluster.mock + "/mock/stats", timeout=5).read())["requests"]
        self.assertEqual(after, sent, "an instance that had only heard of the opening still sent a request")


class Drain(unittest.TestCase):
    """One instance gets SIGTERM under load: it drains and no client request fails."""

    def test_sigterm_under_load_fails_no_request(self):
        cluster = Cluster()
        try:
            process, path = load(cluster.nginx, seconds=8, users=48)
            time.sleep(3)
            os.kill(cluster.pids[1], signal.SIGTERM)
            self.assertTrue(wait_exit(cluster.pids[1], 40), "the instance did not exit within its drain time")
            result = load_result(process, path)
            report("SIGTERM", result)
            self.assertEqual(result["errors"], {}, result["errors_per_second"])
            self.assertGreater(result["succeeded"], 50)
            # The others kept serving after it left.
            self.assertGreater(sum(result["completed_per_second"][5:]), 0)
        finally:
            cluster.stop()


class Kill(unittest.TestCase):
    """One instance gets SIGKILL under load: only its in-flight requests fail; the others keep serving."""

    def test_sigkill_fails_only_the_requests_in_flight_on_it(self):
        cluster = Cluster()
        try:
            users = 48
            process, path = load(cluster.nginx, seconds=7, users=users)
            time.sleep(3)
            os.kill(cluster.pids[2], signal.SIGKILL)
            result = load_result(process, path)
            report("SIGKILL", result)
            failed = sum(result["errors"].values())
            # A user has one request in flight at a time, and least_conn gives the killed one about a third.
            self.assertLessEqual(failed, users // 2, result["errors"])
            per_second = result["errors_per_second"]
            # Failures happen when it dies, not afterwards: nginx sends new requests to the instances alive.
            self.assertEqual(sum(per_second[5:]), 0, per_second)
            after, after_path = load(cluster.nginx, seconds=3, users=users)
            after_result = load_result(after, after_path)
            report("after SIGKILL", after_result)
            self.assertEqual(after_result["errors"], {})
            self.assertGreater(after_result["succeeded"], 50)
        finally:
            cluster.stop()


class RedisRestart(unittest.TestCase):
    """redis-server restarted mid-run: the caches are bypassed while it is down, and the gateways recover alone."""

    def test_gateways_recover_without_restart(self):
        cluster = Cluster()
        try:
            a, b, _ = cluster.instances
            process, path = load(cluster.nginx, seconds=9, users=32, stream=False)
            time.sleep(2)
            os.kill(cluster.redis_pid, signal.SIGKILL)
            time.sleep(2)
            with open(os.path.join(cluster.dir, "redis.log"), "a") as log:
                redis = subprocess.Popen(["redis-server", "--port", str(cluster.redis_port), "--bind", "127.0.0.1",
                                          "--dir", os.path.join(cluster.dir, "redis"), "--appendonly", "yes",
                                          "--save", ""], stdout=log, stderr=log)
            try:
                result = load_result(process, path)
                report("redis restart", result)
                self.assertEqual(result["errors"], {}, result["errors_per_second"])
                # Shared again: an answer cached through A is a hit through B.
                deadline = time.time() + 10
                question = f"Is the store back? {time.time_ns()}"
                recovered = False
                while time.time() < deadline and not recovered:
                    chat(a, question)
                    time.sleep(0.2)
                    recovered = chat(b, question)[1].get("x-switchyard-cache") == "hit-exact"
                    question += "."
                self.assertTrue(recovered, "the instances did not share the exact cache again")
                for instance in cluster.instances:
                    self.assertEqual(get(instance, "/readyz")[0], 200)
            finally:
                redis.terminate()
                redis.wait(timeout=30)
        finally:
            cluster.stop()


def submit_job(base, content, max_tokens=200, priority="p2"):
    body = json.dumps({"request": {"model": "gpt-4o-mini", "max_tokens": max_tokens,
                                   "messages": [{"role": "user", "content": content}]},
                       "priority": priority}).encode()
    request = urllib.request.Request(base + "/v1/jobs", data=body, method="POST",
                                     headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


class JobsSurviveAKilledInstance(unittest.TestCase):
    """A P2 backlog run by two instances, one of them killed with SIGKILL while it runs jobs: no accepted job is
    lost — the other takes over the killed one's claims after the visibility timeout — and each ends once."""

    def test_sigkill_mid_backlog_loses_no_job(self):
        cluster = Cluster(instances=2, extra="cache: {exact: {enabled: false}, semantic: {enabled: false}}\n"
                                             "jobs: {workers: 4, visibility_timeout_seconds: 2, poll_interval_seconds: 0.05}\n")
        try:
            doomed, survivor = cluster.instances
            ids = []
            for index in range(40):
                status, job = submit_job(doomed if index % 2 == 0 else survivor, f"Backlog job {index}: summarise it.")
                self.assertEqual(status, 202, job)
                ids.append(job["id"])

            def state(base, job_id):
                code, body = get(base, f"/v1/jobs/{job_id}")
                self.assertEqual(code, 200, body)
                return json.loads(body)

            # Killed while the backlog runs: some jobs ended, some running, most still waiting.
            deadline = time.time() + 30
            while time.time() < deadline:
                statuses = [state(survivor, job_id)["status"] for job_id in ids]
                if statuses.count("completed") >= 4 and statuses.count("running") >= 4:
                    break
                time.sleep(0.05)
            os.kill(cluster.pids[0], signal.SIGKILL)
            before = {status: statuses.count(status) for status in set(statuses)}
            killed_at = time.time()
            deadline = killed_at + 120
            while time.time() < deadline:
                jobs = [state(survivor, job_id) for job_id in ids]
                if all(job["status"] in ("completed", "failed", "cancelled") for job in jobs):
                    break
                time.sleep(0.2)
            finished = time.time() - killed_at
            outcomes = [job["status"] for job in jobs]
            self.assertEqual(outcomes.count("completed"), len(ids), outcomes)
            self.assertTrue(all(job["result"]["choices"][0]["message"]["content"] for job in jobs))
            taken_over = [job for job in jobs if job["attempts"] > 1]
            # The killed instance was running jobs: another instance ran them again, to one outcome each.
            self.assertGreater(len(taken_over), 0, "no job was taken over: the kill tested nothing")
            print(f"\n  jobs: at the kill {before}; all {len(ids)} completed {finished:.1f} s later, "
                  f"{len(taken_over)} taken over from the killed instance", file=sys.stderr)
        finally:
            cluster.stop()


class PriorityAcrossInstances(unittest.TestCase):
    """One deployment budget, three instances, one queue: batch requests waiting on one instance do not take the
    budget's refills from real-time requests that came later to the others."""

    def test_p0_on_other_instances_goes_before_p2_waiting_first(self):
        cluster = Cluster(extra="cache: {exact: {enabled: false}, semantic: {enabled: false}}\n"
                                "admission: {p2_share: 0}\n",
                          model_options=", budget: {rpm: 60}", mock_latency=0)
        try:
            a, b, c = cluster.instances
            with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
                spent = list(pool.map(lambda index: chat(cluster.instances[index % 3], f"Burst {index}")[0], range(60)))
            self.assertEqual(spent.count(200), 60)
            done = []
            lock = threading.Lock()

            def one(base, priority, index):
                try:
                    status, _, _ = chat(base, f"{priority} request {index}", headers={"x-switchyard-priority": priority})
                except urllib.error.HTTPError as error:
                    status = error.code
                with lock:
                    done.append((priority, index, status, time.time()))

            threads = [threading.Thread(target=one, args=(a, "p2", index)) for index in range(6)]
            for thread in threads:
                thread.start()
            time.sleep(0.5)
            later = [threading.Thread(target=one, args=((b, c)[index % 2], "p0", index)) for index in range(6)]
            for thread in later:
                thread.start()
            for thread in threads + later:
                thread.join(timeout=60)
            order = [priority for priority, _, _, _ in sorted(done, key=lambda entry: entry[3])]
            self.assertTrue(all(status == 200 for _, _, status, _ in done), done)
            # A P2 request may have had the budget's first refill before the P0 requests arrived; after the first P0
            # answer, every P0 comes before any further P2 (with a queue per instance, A's P2 requests would take
            # their instance's share of the refills meanwhile).
            first = order.index("p0")
            self.assertLessEqual(first, 1, order)
            self.assertEqual(order[first:], ["p0"] * 6 + ["p2"] * (6 - first), order)
            print(f"\n  priority across instances: answers in the order {' '.join(order)}", file=sys.stderr)
        finally:
            cluster.stop()


if __name__ == "__main__":
    unittest.main()
