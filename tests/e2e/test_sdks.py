"""End-to-end tests: the official OpenAI and Anthropic Python SDKs against a running `switchyard serve`.

Run by scripts/e2e.sh, which builds the gateway, installs the SDKs into a virtual environment and sets
SWITCHYARD_BIN. Each test class starts its own gateway process on a free loopback port.
"""

import json
import os
import signal
import socket
import subprocess
import threading
import time
import unittest
import urllib.request

import anthropic
import openai

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("SWITCHYARD_BIN", os.path.join(HERE, "..", "..", ".build", "debug", "switchyard"))
KEY = "sk-e2e-test"
TOOLS_OPENAI = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOLS_ANTHROPIC = [{"name": "get_weather", "description": "Weather for a city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """A `switchyard serve` process."""

    def __init__(self, *args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([BIN, "serve", "--port", str(self.port), "--log-level", "warning", *args],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gateway did not become ready")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


class SDKTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gateway = Gateway("--config", os.path.join(HERE, "e2e.yaml"))
        cls.openai = openai.OpenAI(base_url=cls.gateway.url + "/v1", api_key=KEY, max_retries=0)
        cls.anthropic = anthropic.Anthropic(base_url=cls.gateway.url, api_key=KEY, max_retries=0)

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()

    # OpenAI SDK

    def test_openai_non_stream_both_upstreams(self):
        for model in ["gpt-4o-mini", "claude-haiku-4-5"]:
            raw = self.openai.chat.completions.with_raw_response.create(
                model=model, max_tokens=10, messages=[{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "What is an AI gateway?"}])
            completion = raw.parse()
            self.assertEqual(completion.choices[0].finish_reason, "length")
            self.assertEqual(len(completion.choices[0].message.content.split()), 10)
            self.assertEqual(completion.usage.completion_tokens, 10)
            self.assertGreater(completion.usage.prompt_tokens, 0)
            self.assertEqual(raw.headers["x-switchyard-model"], model)
            self.assertGreater(float(raw.headers["x-switchyard-cost-usd"]), 0)
            self.assertTrue(raw.headers["x-request-id"].startswith("req_"))

    def test_openai_stream_with_usage(self):
        for model in ["gpt-4o-mini", "claude-haiku-4-5"]:
            stream = self.openai.chat.completions.create(
                model=model, max_tokens=8, stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "Stream please"}])
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            self.assertEqual(len(text.split()), 8)
            self.assertEqual(chunks[-1].usage.completion_tokens, 8)
            self.assertEqual([c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason], ["length"])

    def test_openai_tools(self):
        for model in ["gpt-4o-mini", "claude-haiku-4-5"]:
            completion = self.openai.chat.completions.create(
                model=model, tools=TOOLS_OPENAI, tool_choice="auto",
                messages=[{"role": "user", "content": "Weather in Paris?"}])
            call = completion.choices[0].message.tool_calls[0]
            self.assertEqual(completion.choices[0].finish_reason, "tool_calls")
            self.assertEqual(call.function.name, "get_weather")
            self.assertIn("city", json.loads(call.function.arguments))
            follow_up = self.openai.chat.completions.create(model=model, tools=TOOLS_OPENAI, messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}])
            self.assertEqual(follow_up.choices[0].finish_reason, "stop")
            self.assertTrue(follow_up.choices[0].message.content)

    def test_openai_errors(self):
        with self.assertRaises(openai.BadRequestError):
            self.openai.chat.completions.create(model="gpt-4o-mini", temperature=5, messages=[{"role": "user", "content": "x"}])
        bad_key = openai.OpenAI(base_url=self.gateway.url + "/v1", api_key="sk-wrong", max_retries=0)
        with self.assertRaises(openai.AuthenticationError):
            bad_key.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        with self.assertRaises(openai.NotFoundError):
            self.openai.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
        with self.assertRaises(openai.APIStatusError) as too_large:
            self.openai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 100_000}])
        self.assertEqual(too_large.exception.status_code, 413)
        with self.assertRaises(openai.RateLimitError) as limited:
            self.openai.chat.completions.create(model="gpt-4o-mini-429", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(limited.exception.response.headers["retry-after"], "2")

    def test_openai_embeddings(self):
        # The SDK asks for base64 by default and decodes it.
        result = self.openai.embeddings.create(model="all-MiniLM-L6-v2", input=["How do I reset my card PIN?", ""])
        self.assertEqual([len(item.embedding) for item in result.data], [384, 384])
        self.assertAlmostEqual(sum(x * x for x in result.data[0].embedding), 1.0, places=4)
        floats = self.openai.embeddings.create(model="local-embedding", input="How do I reset my card PIN?",
                                               encoding_format="float")
        self.assertTrue(all(abs(a - b) < 1e-6 for a, b in zip(floats.data[0].embedding, result.data[0].embedding)))
        self.assertGreater(result.usage.prompt_tokens, 0)
        with self.assertRaises(openai.BadRequestError):
            self.openai.embeddings.create(model="all-MiniLM-L6-v2", input="x", dimensions=128)

    # Anthropic SDK

    def test_anthropic_non_stream_both_upstreams(self):
        for model in ["claude-haiku-4-5", "gpt-4o-mini"]:
            message = self.anthropic.messages.create(
                model=model, max_tokens=10, system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                messages=[{"role": "user", "content": "What is an AI gateway?"}])
            self.assertEqual(message.stop_reason, "max_tokens")
            self.assertEqual(len(message.content[0].text.split()), 10)
            self.assertEqual(message.usage.output_tokens, 10)
            self.assertGreater(message.usage.input_tokens, 0)

    def test_anthropic_messages_stream(self):
        for model in ["claude-haiku-4-5", "gpt-4o-mini"]:
            with self.anthropic.messages.stream(model=model, max_tokens=7,
                                                messages=[{"role": "user", "content": "Stream please"}]) as stream:
                text = "".join(stream.text_stream)
                final = stream.get_final_message()
            self.assertEqual(len(text.split()), 7)
            self.assertEqual(final.usage.output_tokens, 7)
            self.assertEqual(final.stop_reason, "max_tokens")
            self.assertGreater(final.usage.input_tokens, 0)

    def test_anthropic_tools(self):
        for model in ["claude-haiku-4-5", "gpt-4o-mini"]:
            message = self.anthropic.messages.create(model=model, max_tokens=100, tools=TOOLS_ANTHROPIC,
                                                     messages=[{"role": "user", "content": "Weather in Rome?"}])
            self.assertEqual(message.stop_reason, "tool_use")
            tool_use = message.content[0]
            self.assertEqual(tool_use.name, "get_weather")
            self.assertIn("city", tool_use.input)
            with self.anthropic.messages.stream(model=model, max_tokens=1000, tools=TOOLS_ANTHROPIC, messages=[
                    {"role": "user", "content": "Weather in Rome?"},
                    {"role": "assistant", "content": [block.model_dump() for block in message.content]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "24C"}]}]) as stream:
                final = stream.get_final_message()
            self.assertEqual(final.stop_reason, "end_turn")

    def test_anthropic_errors(self):
        with self.assertRaises(anthropic.BadRequestError):
            self.anthropic.messages.create(model="claude-haiku-4-5", max_tokens=0, messages=[{"role": "user", "content": "x"}])
        bad_key = anthropic.Anthropic(base_url=self.gateway.url, api_key="sk-wrong", max_retries=0)
        with self.assertRaises(anthropic.AuthenticationError):
            bad_key.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        with self.assertRaises(anthropic.NotFoundError):
            self.anthropic.messages.create(model="claude-9", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        with self.assertRaises(anthropic.RequestTooLargeError):
            self.anthropic.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x" * 100_000}])
        with self.assertRaises(anthropic.RateLimitError) as limited:
            self.anthropic.messages.create(model="claude-haiku-4-5-429", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        self.assertEqual(limited.exception.response.headers["retry-after"], "2")

    def test_models_list(self):
        self.assertIn("gpt-4o-mini", [m.id for m in self.openai.models.list()])
        self.assertIn("claude-haiku-4-5", [m.id for m in self.anthropic.models.list()])


class DrainTests(unittest.TestCase):
    def test_sigterm_lets_an_inflight_stream_finish(self):
        gateway = Gateway("--mock-latency-scale", "1")  # embedded default, realistic latency
        try:
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="any-key", max_retries=0)
            stream = client.chat.completions.create(model="gpt-4o", stream=True, max_tokens=60,
                                                    messages=[{"role": "user", "content": "Tell me a story"}])
            chunks = [next(iter(stream))]
            gateway.process.send_signal(signal.SIGTERM)
            chunks += list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            self.assertEqual(len(text.split()), 60)
            self.assertEqual(chunks[-1].choices[0].finish_reason, "length")
            self.assertEqual(gateway.process.wait(timeout=30), 0)
            with self.assertRaises(OSError):
                urllib.request.urlopen(gateway.url + "/healthz", timeout=2)
        finally:
            gateway.stop()


class QueueTests(unittest.TestCase):
    """A stream waiting in a deployment's queue gets SSE comments with its position before its events: both SDKs
    skip them and read the stream as usual (tests/e2e/queue.yaml)."""

    @classmethod
    def setUpClass(cls):
        cls.gateway = Gateway("--config", os.path.join(HERE, "queue.yaml"))
        cls.openai = openai.OpenAI(base_url=cls.gateway.url + "/v1", api_key=KEY, max_retries=0)
        cls.anthropic = anthropic.Anthropic(base_url=cls.gateway.url, api_key=KEY, max_retries=0)

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()

    def spend(self, model):
        def one(index):
            self.openai.chat.completions.create(model=model, max_tokens=5, messages=[{"role": "user", "content": f"burst {index}"}])
        threads = [threading.Thread(target=one, args=(index,)) for index in range(60)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def test_both_sdks_read_a_stream_that_waited(self):
        self.spend("gpt-4o-mini")
        self.spend("claude-haiku-4-5")
        results = {}

        def raw():
            body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 10, "stream": True,
                               "messages": [{"role": "user", "content": "raw"}]}).encode()
            request = urllib.request.Request(self.gateway.url + "/v1/chat/completions", data=body, method="POST",
                                             headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                results["raw"] = response.read().decode()

        def with_openai():
            started = time.time()
            stream = self.openai.chat.completions.create(model="gpt-4o-mini", max_tokens=10, stream=True,
                                                         messages=[{"role": "user", "content": "openai"}])
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
            results["openai"] = (text, time.time() - started)

        def with_anthropic():
            started = time.time()
            with self.anthropic.messages.stream(model="claude-haiku-4-5", max_tokens=10,
                                                messages=[{"role": "user", "content": "anthropic"}]) as stream:
                results["anthropic"] = (stream.get_final_text(), time.time() - started)

        threads = [threading.Thread(target=raw)]
        threads[0].start()
        time.sleep(0.1)
        threads += [threading.Thread(target=with_openai), threading.Thread(target=with_anthropic)]
        for thread in threads[1:]:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        self.assertTrue(results["raw"].startswith(": queued position=0"), results["raw"][:200])
        self.assertTrue(results["raw"].endswith("data: [DONE]\n\n"))
        text, waited = results["openai"]
        self.assertTrue(text)
        self.assertGreater(waited, 0.5, "the OpenAI stream did not wait: the test shows nothing")
        text, waited = results["anthropic"]
        self.assertTrue(text)
        self.assertGreater(waited, 0.3, "the Anthropic stream did not wait: the test shows nothing")



class LimitTests(unittest.TestCase):
    """Rate limits as the official SDKs see them: each API's own headers on answers, its RateLimitError with an
    accurate retry-after on refusal, and a downgrade that answers instead (tests/e2e/limits.yaml)."""

    @classmethod
    def setUpClass(cls):
        cls.gateway = Gateway("--config", os.path.join(HERE, "limits.yaml"))
        cls.openai = openai.OpenAI(base_url=cls.gateway.url + "/v1", api_key="sk-e2e-limits-openai", max_retries=0)
        cls.anthropic = anthropic.Anthropic(base_url=cls.gateway.url, api_key="sk-e2e-limits-anthropic", max_retries=0)

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()

    def test_openai_headers_refusal_and_downgrade(self):
        raw = self.openai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "one"}])
        self.assertEqual(raw.headers["x-ratelimit-limit-requests"], "3")
        self.assertEqual(raw.headers["x-ratelimit-remaining-requests"], "2")
        self.assertEqual(raw.headers["x-ratelimit-reset-requests"], "20s")
        self.assertEqual(raw.headers["x-ratelimit-limit-tokens"], "100000")
        self.assertLess(int(raw.headers["x-ratelimit-remaining-tokens"]), 100000)
        self.assertNotIn("anthropic-ratelimit-requests-limit", raw.headers)
        self.assertTrue(raw.parse().choices[0].message.content)
        # The strong model's own limit (1 a minute) is spent by the first call: the second is downgraded.
        self.openai.chat.completions.create(model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "two"}])
        raw = self.openai.chat.completions.with_raw_response.create(
            model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "three"}])
        self.assertEqual(raw.headers["x-switchyard-degraded"], "downgrade")
        self.assertEqual(raw.headers["x-switchyard-model"], "gpt-4o-mini")
        self.assertTrue(raw.parse().choices[0].message.content)
        # Three requests a minute per user: the fourth is the SDK's RateLimitError, naming the limit.
        with self.assertRaises(openai.RateLimitError) as limited:
            self.openai.chat.completions.create(model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "four"}])
        error = limited.exception
        self.assertEqual(error.status_code, 429)
        self.assertIn("per-user", error.message)
        self.assertEqual(error.type, "rate_limit_error")
        retry = int(error.response.headers["retry-after"])
        self.assertTrue(15 <= retry <= 21, retry)
        self.assertEqual(error.response.headers["x-ratelimit-remaining-requests"], "0")

    def test_anthropic_headers_refusal_and_streams(self):
        raw = self.anthropic.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "one"}])
        self.assertEqual(raw.headers["anthropic-ratelimit-requests-limit"], "3")
        self.assertEqual(raw.headers["anthropic-ratelimit-requests-remaining"], "2")
        self.assertRegex(raw.headers["anthropic-ratelimit-requests-reset"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(raw.headers["anthropic-ratelimit-tokens-limit"], "100000")
        self.assertNotIn("x-ratelimit-limit-requests", raw.headers)
        self.assertTrue(raw.parse().content[0].text)
        # A stream carries them too, and settles when it ends.
        with self.anthropic.messages.stream(model="claude-haiku-4-5", max_tokens=20,
                                            messages=[{"role": "user", "content": "two"}]) as stream:
            self.assertEqual(stream.response.headers["anthropic-ratelimit-requests-remaining"], "1")
            self.assertTrue(stream.get_final_text())
        self.anthropic.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "three"}])
        with self.assertRaises(anthropic.RateLimitError) as limited:
            self.anthropic.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "four"}])
        error = limited.exception
        self.assertEqual(error.status_code, 429)
        self.assertEqual(error.body["error"]["type"], "rate_limit_error")
        self.assertIn("per-user", error.body["error"]["message"])
        self.assertTrue(15 <= int(error.response.headers["retry-after"]) <= 21)
        self.assertEqual(error.response.headers["anthropic-ratelimit-requests-remaining"], "0")


if __name__ == "__main__":
    unittest.main(verbosity=2)
