"""The openai-images backend against a small OpenAI-compatible HTTP server on 127.0.0.1 (real client, real HTTP)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

pytest.importorskip("openai")

from dpgbench import registry  # noqa: E402
from dpgbench.backends import BACKENDS  # noqa: E402
from dpgbench.backends.openai_images import PromptRefused  # noqa: E402
from dpgbench.data import Prompt  # noqa: E402
from dpgbench.errors import DpgBenchError  # noqa: E402
from dpgbench.generate import GenerateConfig, generate  # noqa: E402
from dpgbench.runs import RunPaths, read_jsonl  # noqa: E402

KEY = "sk-test-key"


def png(text: str) -> bytes:
    """A 16x16 PNG whose colour is a hash of `text`."""
    colour = tuple(hashlib.sha256(text.encode()).digest()[:3])
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class ImagesAPI(BaseHTTPRequestHandler):
    """POST /v1/images/generations with scripted failures chosen by words in the prompt."""

    seen: Counter = Counter()
    requests: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        self._reply(status, {"error": {"message": message, "type": "error", "code": code}}, headers)

    def do_POST(self):  # noqa: N802 - the name http.server calls
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers["Authorization"], "body": body})
        prompt = body["prompt"]
        type(self).seen[prompt] += 1
        count = type(self).seen[prompt]
        if self.headers["Authorization"] != f"Bearer {KEY}":
            return self._error(401, "invalid_api_key", "Incorrect API key provided")
        if "rate limited once" in prompt and count == 1:
            return self._error(429, "rate_limit_exceeded", "Rate limit reached", {"Retry-After": "0.05"})
        if "slow down once" in prompt and count == 1:
            return self._error(429, "rate_limit_exceeded", "Rate limit reached", {"Retry-After": "0.4"})
        if "server error once" in prompt and count == 1:
            return self._error(500, "server_error", "The server had an error")
        if "always busy" in prompt:
            return self._error(503, "overloaded", "The engine is currently overloaded")
        if "no quota" in prompt:
            return self._error(429, "insufficient_quota", "You exceeded your current quota")
        if "forbidden" in prompt:
            return self._error(
                400, "content_policy_violation", "Your request was rejected by the safety system"
            )
        if body["size"] == "13x13":
            return self._error(400, "invalid_size", "'13x13' is not one of the supported sizes")
        answer = {"created": 1, "data": [{"b64_json": base64.b64encode(png(f"{prompt}#{count}")).decode()}]}
        if body["model"].startswith("gpt-image"):
            answer["usage"] = {
                "input_tokens": 50,
                "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
                "output_tokens": 4160,
                "total_tokens": 4210,
            }
        else:
            answer["data"][0]["revised_prompt"] = f"A detailed picture: {prompt}"
        return self._reply(200, answer)


@pytest.fixture()
def server(monkeypatch):
    ImagesAPI.seen = Counter()
    ImagesAPI.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ImagesAPI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TEST_IMAGES_KEY", KEY)
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def backend(base_url: str, **args: str):
    options = {"base_url": base_url, "api_key_env": "TEST_IMAGES_KEY", "backoff": "0.01", "max_retries": "2"}
    return registry.create(BACKENDS, "openai-images", "backend", options | args)


def test_images_arrive_with_costs_and_revised_prompts(server):
    api = backend(server)
    images = api.generate("a red cat", [1, 2, 3, 4])
    assert [image.size for image in images] == [(16, 16)] * 4
    # Each image is its own request (DALL·E 3 allows n=1 only).
    assert sorted(image.tobytes() for image in images) == sorted(
        Image.open(io.BytesIO(png(f"a red cat#{k}"))).convert("RGB").tobytes() for k in (1, 2, 3, 4)
    )
    assert images[0].info["revised_prompt"] == "A detailed picture: a red cat"
    assert images[0].info["cost_usd"] == 0.040
    body = ImagesAPI.requests[0]["body"]
    assert body == {
        "model": "dall-e-3",
        "prompt": "a red cat",
        "n": 1,
        "size": "1024x1024",
        "response_format": "b64_json",
    }
    assert ImagesAPI.requests[0]["path"] == "/v1/images/generations"
    assert ImagesAPI.requests[0]["auth"] == f"Bearer {KEY}"
    usage = api.info()["usage"]
    assert usage == {
        "images": 4,
        "requests": 4,
        "retries": 0,
        "refused": 0,
        "cost_usd": pytest.approx(0.16),
        "cost_known": True,
    }
    assert KEY not in json.dumps(api.info())  # the manifest names the variable, never the key


def test_gpt_image_cost_comes_from_token_usage(server):
    api = backend(server, model="gpt-image-1", quality="high")
    [image] = api.generate("a blue chair", [7])
    # (50 text tokens x $5 + 4160 image tokens x $40) per million tokens.
    assert image.info["cost_usd"] == pytest.approx(0.16665)
    assert "response_format" not in ImagesAPI.requests[0]["body"]
    assert ImagesAPI.requests[0]["body"]["quality"] == "high"


def test_429_and_5xx_are_retried_then_succeed(server):
    api = backend(server)
    [first] = api.generate("rate limited once", [1])
    [second] = api.generate("server error once", [1])
    assert ImagesAPI.seen == Counter({"rate limited once": 2, "server error once": 2})
    assert first.tobytes() == Image.open(io.BytesIO(png("rate limited once#2"))).convert("RGB").tobytes()
    assert second.size == (16, 16)
    assert api.info()["usage"]["retries"] == 2
    assert api.info()["usage"]["requests"] == 4


def test_a_service_that_stays_down_fails_the_image_after_the_retries(server):
    api = backend(server)
    with pytest.raises(RuntimeError, match=r"gave up after 3 attempts: InternalServerError: The engine is"):
        api.generate("always busy", [1])
    assert ImagesAPI.seen["always busy"] == 3


def test_refusal_quota_key_and_option_errors(server, monkeypatch):
    api = backend(server)
    with pytest.raises(PromptRefused, match=r"refused by the API \(content_policy_violation\): Your request"):
        api.generate("something forbidden", [1])
    assert api.info()["usage"]["refused"] == 1
    with pytest.raises(DpgBenchError, match="out of quota"):
        api.generate("no quota left", [1])
    with pytest.raises(
        DpgBenchError, match="option rejected by the API: '13x13' is not one of the supported"
    ):
        backend(server, size="13x13").generate("a cat", [1])
    monkeypatch.setenv("TEST_IMAGES_KEY", "sk-wrong")
    with pytest.raises(
        DpgBenchError, match="AuthenticationError: Incorrect API key provided; check TEST_IMAGES_KEY"
    ):
        backend(server).generate("a cat", [1])
    monkeypatch.delenv("TEST_IMAGES_KEY")
    with pytest.raises(DpgBenchError, match="set TEST_IMAGES_KEY to your API key"):
        backend(server)


def test_generate_records_a_refused_prompt_as_failed_and_goes_on(server, tmp_path):
    paths = RunPaths(tmp_path / "run")
    config = GenerateConfig("openai-images", {}, "test", images_per_prompt=2)
    prompts = [Prompt("p1", "a red cat"), Prompt("p2", "something forbidden"), Prompt("p3", "a blue chair")]
    summary = generate(paths, config, prompts, backend(server))
    assert (summary.done, len(summary.failed)) == (4, 2)
    records = read_jsonl(paths.images_log())
    statuses = {(r["item_id"], r["index"]): r["status"] for r in records}
    assert statuses == {
        ("p1", 0): "ok",
        ("p1", 1): "ok",
        ("p2", 0): "failed",
        ("p2", 1): "failed",
        ("p3", 0): "ok",
        ("p3", 1): "ok",
    }
    reasons = {r["error"] for r in records if r["status"] == "failed"}
    assert len(reasons) == 1 and reasons.pop().startswith(
        "PromptRefused: refused by the API (content_policy_violation)"
    )
    assert sorted(p.name for p in paths.images_dir.iterdir()) == [
        "p1_0.png",
        "p1_1.png",
        "p3_0.png",
        "p3_1.png",
    ]


def test_backoff_honours_retry_after_and_grows_exponentially(server):
    import time

    from dpgbench.openai_compat import backoff_wait

    api = backend(server)
    start = time.perf_counter()
    api.generate("slow down once", [1])
    assert time.perf_counter() - start >= 0.4  # the server's Retry-After, not our 0.01 s backoff
    # Without Retry-After: backoff * 2**attempt with +-20% jitter, capped.
    waits = [backoff_wait(attempt, RuntimeError("no response"), 1.0, 5.0) for attempt in range(5)]
    for attempt, wait in enumerate(waits):
        assert 0.8 * min(2**attempt, 5.0) <= wait <= 1.2 * min(2**attempt, 5.0)


def test_an_endpoint_never_reached_stops_the_run(monkeypatch):
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("TEST_IMAGES_KEY", KEY)
    api = backend(f"http://127.0.0.1:{port}/v1", max_retries="1")
    with pytest.raises(DpgBenchError, match=rf"cannot reach http://127.0.0.1:{port}/v1 after 2 attempts"):
        api.generate("a cat", [1])


def test_cli_run_records_refusals_costs_and_goes_on(server, tmp_path, capsys):
    """`dpgbench generate --backend openai-images` on a prompt folder: the refused prompt is logged as
    failed with the API's reason, the others are made, the cost lands in the log and the manifest."""
    from dpgbench.cli import main

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for name, text in (("p1", "a red cat"), ("p2", "something forbidden"), ("p3", "rate limited once")):
        (prompts / f"{name}.txt").write_text(text)
    out = tmp_path / "run"
    args = ["generate", "--backend", "openai-images", "--prompts", str(prompts), "--out", str(out)]
    args += ["--images-per-prompt", "2"]
    for key, value in {"base_url": server, "api_key_env": "TEST_IMAGES_KEY", "backoff": "0.01"}.items():
        args += ["--backend-arg", f"{key}={value}"]
    with pytest.raises(SystemExit) as caught:
        main(args)
    stdout, stderr = capsys.readouterr()
    assert caught.value.code == 1  # some images failed
    assert "4 image(s) made, 0 already done, 2 failed" in stdout
    assert "failed p2[0]: PromptRefused: refused by the API (content_policy_violation)" in stderr
    records = {(r["item_id"], r["index"]): r for r in read_jsonl(RunPaths(out).images_log())}
    assert [records[("p2", i)]["status"] for i in range(2)] == ["failed", "failed"]
    assert records[("p1", 0)]["cost_usd"] == 0.04 and records[("p3", 1)]["revised_prompt"].startswith(
        "A detailed"
    )
    usage = json.loads((out / "manifest.json").read_text())["backend"]["usage"]
    assert (usage["images"], usage["refused"], usage["retries"]) == (4, 2, 1)
    assert usage["cost_usd"] == pytest.approx(0.16) and usage["requests"] == 7
    # Rerun: the made images are kept, the refused prompt is asked again (and refused again).
    with pytest.raises(SystemExit):
        main(args)
    stdout, _ = capsys.readouterr()
    assert "0 image(s) made, 4 already done, 2 failed" in stdout
