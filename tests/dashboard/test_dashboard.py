"""The dashboard in headless Chromium (Debian's chromium and chromium-driver, Selenium from PyPI).

A gateway with two callers' keys and the admin key answers a known sequence of requests; the browser logs in with
the admin key and the test checks the page's figures and charts against what the requests cost (each answer's
x-switchyard-cost-usd), saves screenshots (SCREENSHOTS, default docs/screenshots), and checks that a tenant's key,
a form without its CSRF token and a form from another site cannot open it.
"""

import hashlib
import json
import os
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from decimal import Decimal

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

BIN = os.environ["SWITCHYARD_BIN"]
SHOTS = os.environ.get("SCREENSHOTS", "docs/screenshots")
ADMIN = "dashboard-admin-key"
KEYS = {"alice-key": ("acme", "alice", "chat"), "bob-key": ("acme", "bob", "code")}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nano(usd):
    return int(Decimal(usd) * 1_000_000_000)


def call(url, method="GET", body=None, headers=None):
    request = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp()
        cls.port = free_port()
        keys = "\n".join(
            f"  - {{sha256: {hashlib.sha256(key.encode()).hexdigest()}, tenant: {tenant}, user: {user}, feature: {feature}}}"
            for key, (tenant, user, feature) in KEYS.items())
        config = os.path.join(cls.work, "gateway.yaml")
        with open(config, "w") as f:
            f.write(f"""listen: {{host: 127.0.0.1, port: {cls.port}}}
mock_latency_scale: 0.05
providers: {{mock: {{kind: mock}}}}
models:
  gpt-4o-mini: {{provider: mock}}
  claude-haiku-4-5: {{provider: mock}}
cache: {{semantic: {{enabled: false}}}}
ledger: {{flush_ms: 200}}
routes:
  support: {{rules: [{{name: code, when: {{feature: code}}, model: claude-haiku-4-5}}, {{name: chat, model: gpt-4o-mini}}]}}
limits:
  - {{name: haiku-per-user, requests: 2, per: minute, scope: [user], when: {{model: claude-haiku-4-5}}}}
degrade:
  - steps: [{{downgrade: [gpt-4o-mini]}}]
keys:
{keys}
""")
        cls.log = open(os.path.join(cls.work, "gateway.log"), "w")
        cls.gateway = subprocess.Popen([BIN, "serve", "--config", config, "--no-embeddings", "--log-level", "warning"],
                                       env=dict(os.environ, SWITCHYARD_ADMIN_KEY=ADMIN), stdout=cls.log, stderr=subprocess.STDOUT)
        cls.url = f"http://127.0.0.1:{cls.port}"
        for _ in range(200):
            try:
                if call(cls.url + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        cls.expected = cls.send_known_requests()
        options = Options()
        options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
        for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1560",
                         "--hide-scrollbars", "--force-device-scale-factor=1"]:
            options.add_argument(argument)
        cls.browser = webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=options)
        cls.browser.set_page_load_timeout(20)
        os.makedirs(SHOTS, exist_ok=True)

    @classmethod
    def tearDownClass(cls):
        cls.browser.quit()
        cls.gateway.terminate()
        cls.gateway.wait(timeout=10)
        cls.log.close()

    @classmethod
    def send_known_requests(cls):
        """Alice asks three questions twice (three answers, three exact-cache hits) and one through the `support` route;
        Bob asks Haiku twice, once through the route (past his Haiku limit: downgraded to gpt-4o-mini), and once names
        a model that does not exist. Returns what the page should show."""
        expected = {"requests": 0, "cost": 0, "saved": 0, "hits": 0, "errors": 0, "by_model": {}, "by_user": {}, "degraded": 0}

        def chat(key, model, text):
            body = json.dumps({"model": model, "max_tokens": 30, "messages": [{"role": "user", "content": text}]}).encode()
            status, headers, _ = call(cls.url + "/v1/chat/completions", "POST", body,
                                      {"authorization": f"Bearer {key}", "content-type": "application/json"})
            expected["requests"] += 1
            if status != 200:
                expected["errors"] += 1
                return status, 0, headers
            cost = nano(headers.get("x-switchyard-cost-usd", "0"))
            user = KEYS[key][1]
            model = headers.get("x-switchyard-model", model)
            if headers.get("x-switchyard-degraded"):
                expected["degraded"] += 1
            if headers.get("x-switchyard-cache") == "hit-exact":
                expected["hits"] += 1
            else:
                expected["cost"] += cost
                expected["by_model"][model] = expected["by_model"].get(model, 0) + cost
                expected["by_user"][user] = expected["by_user"].get(user, 0) + cost
            return status, cost, headers

        answers = {}
        for text in ["What is a gateway?", "How do caches save money?", "Why route to cheaper models?"]:
            _, cost, _ = chat("alice-key", "gpt-4o-mini", text)
            answers[text] = cost
        for text in answers:
            _, _, headers = chat("alice-key", "gpt-4o-mini", text)
            assert headers.get("x-switchyard-cache") == "hit-exact", headers
            expected["saved"] += answers[text]
        chat("bob-key", "claude-haiku-4-5", "Write a haiku about queues.")
        chat("bob-key", "claude-haiku-4-5", "Write a haiku about budgets.")
        _, _, headers = chat("bob-key", "support", "Why did my build fail?")
        assert headers.get("x-switchyard-degraded") == "downgrade" and headers.get("x-switchyard-model") == "gpt-4o-mini", headers
        chat("alice-key", "support", "How do I export my data?")
        status, _, _ = chat("bob-key", "no-such-model", "hello?")
        assert status == 404
        return expected

    def wait_for(self, condition, timeout=20, message=""):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if condition():
                    return
            except Exception:
                pass
            time.sleep(0.2)
        self.fail(message or "condition not met in time")

    def value(self, element_id):
        return self.browser.find_element(By.ID, element_id).get_attribute("data-value")

    def log_in(self, key):
        self.browser.delete_all_cookies()
        self.browser.get(self.url + "/dashboard")
        self.browser.find_element(By.ID, "key").send_keys(key)
        self.browser.find_element(By.ID, "login").click()

    def test_1_a_tenant_key_cannot_open_it(self):
        self.browser.delete_all_cookies()
        self.browser.get(self.url + "/dashboard")
        self.browser.save_screenshot(os.path.join(SHOTS, "dashboard-login.png"))
        self.log_in("alice-key")
        self.wait_for(lambda: self.browser.find_element(By.ID, "login-error").is_displayed(), message="no error shown")
        self.assertIn("not the admin key", self.browser.find_element(By.ID, "login-error").text)
        self.assertIsNone(self.browser.get_cookie("sy_session"))
        # Neither the data nor the script is served without a session, and a key in the URL opens nothing.
        self.assertEqual(call(self.url + "/dashboard/data")[0], 401)
        self.assertEqual(call(self.url + "/dashboard/data", headers={"authorization": "Bearer alice-key"})[0], 401)
        self.assertEqual(call(self.url + f"/dashboard/data?key={ADMIN}")[0], 401)

    def test_2_forms_need_their_token_and_this_origin(self):
        opener = urllib.request.build_opener(NoRedirect)

        def post(body, headers):
            request = urllib.request.Request(self.url + "/dashboard/login", method="POST", data=body.encode(), headers=headers)
            try:
                with opener.open(request, timeout=10) as response:
                    return response.status, response.headers
            except urllib.error.HTTPError as error:
                return error.code, error.headers

        form = {"content-type": "application/x-www-form-urlencoded"}
        self.assertEqual(post(f"key={ADMIN}", form)[0], 403, "no CSRF token")
        token = "a" * 64
        with_token = dict(form, cookie=f"sy_csrf={token}")
        self.assertEqual(post(f"key={ADMIN}&csrf={'b' * 64}", with_token)[0], 403, "a token that is not the cookie's")
        self.assertEqual(post(f"key={ADMIN}&csrf={token}", dict(with_token, origin="http://evil.example"))[0], 403, "another site")
        status, headers = post(f"key={ADMIN}&csrf={token}", dict(with_token, origin=self.url))
        self.assertEqual(status, 303)
        cookie = headers.get("set-cookie", "")
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"]:
            self.assertIn(attribute, cookie)

    def test_3_the_admin_sees_the_figures_of_the_requests(self):
        expected = self.expected
        self.log_in(ADMIN)
        self.wait_for(lambda: self.browser.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true",
                      message="the dashboard did not load its data")
        # The ledger flushes every 200 ms and the page refreshes every 5 s: wait until it shows every request.
        self.wait_for(lambda: self.value("requests") == str(expected["requests"]), timeout=30,
                      message=f"requests shown {self.value('requests')}, sent {expected['requests']}")
        self.assertEqual(int(self.value("spend")), expected["cost"])
        self.assertGreater(expected["cost"], 0)
        self.assertEqual(int(self.value("hit-rate")), expected["hits"])
        self.assertEqual(self.browser.find_element(By.ID, "hit-rate").text, f"{expected['hits'] / expected['requests'] * 100:.1f}%")
        self.assertEqual(int(self.value("error-rate")), expected["errors"])
        self.assertNotEqual(self.browser.find_element(By.ID, "latency-p50").text, "–")

        def bars(chart):
            return {bar.get_attribute("data-label"): int(bar.get_attribute("data-value"))
                    for bar in self.browser.find_elements(By.CSS_SELECTOR, f"#{chart} rect.bar")}

        models = bars("by-model")
        for model, cost in expected["by_model"].items():
            self.assertEqual(models.get(model), cost, f"{model}: {models}")
        users = bars("by-user")
        for user, cost in expected["by_user"].items():
            self.assertEqual(users.get(user), cost, f"{user}: {users}")
        self.assertEqual(bars("by-tenant").get("acme"), expected["cost"])
        # Saved: the exact hits' answers, and the route's answers against its reference (Haiku, the priciest it picks).
        levers = bars("savings-levers")
        self.assertEqual(levers.get("exact"), expected["saved"])
        self.assertGreater(levers.get("routing"), 0)
        self.assertEqual(int(self.value("saved")), sum(levers.values()))
        self.assertEqual(bars("errors").get("model_not_found"), 1)
        self.assertEqual(bars("route-mix"), {"support/code": 1, "support/chat": 1})
        self.assertEqual(int(self.value("degraded")), expected["degraded"])
        self.assertEqual(expected["degraded"], 1)
        self.assertEqual(bars("refusals").get("downgrade"), 1)
        # The spend line has a point per minute of the hour, and its legend names both series.
        series = self.browser.find_elements(By.CSS_SELECTOR, "#chart-spend polyline.series")
        self.assertEqual([s.get_attribute("data-series") for s in series], ["spend", "saved"])
        self.assertEqual(len(series[0].get_attribute("points").split()), 60)
        # Spend over time by model: a line per model that cost something, each adding up to the model's spend.
        split = {line.get_attribute("data-series"): line for line in self.browser.find_elements(By.CSS_SELECTOR, "#chart-split polyline.series")}
        self.assertTrue(set(expected["by_model"]).issubset(split), f"{list(split)}")
        self.browser.save_screenshot(os.path.join(SHOTS, "dashboard.png"))

        # Logging out ends the session: the data is refused again.
        self.browser.find_element(By.CSS_SELECTOR, "form[action='/dashboard/logout'] button").click()
        self.wait_for(lambda: self.browser.find_elements(By.ID, "key"), message="not back at the login form")
        self.assertIsNone(self.browser.get_cookie("sy_session"))


if __name__ == "__main__":
    unittest.main()
