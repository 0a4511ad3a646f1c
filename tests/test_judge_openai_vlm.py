"""openai-vlm judge against a fake OpenAI-compatible server on 127.0.0.1 (real `openai` client, real HTTP).

The server decodes the PNG it receives and answers "yes" iff the question names the image's colour, so exact
answers prove the image arrived intact; scripted 429/500/503 replies exercise retries, Retry-After and giving
up; it records concurrency, request bodies and reports token usage for cost accounting.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("openai")

from cli_runner import invoke  # noqa: E402
from PIL import Image  # noqa: E402

from dpgbench import registry  # noqa: E402
from dpgbench.errors import DpgBenchError  # noqa: E402
from dpgbench.judges import JUDGES  # noqa: E402
from dpgbench.judges.openai_vlm import OpenAIVlmConfig, OpenAIVlmJudge  # noqa: E402

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


class FakeChatServer:
    """Chat completions with image input. Markers in a question script failures: "[429]" fails once with
    Retry-After: 0, "[500]" fails twice, "[503!]" always fails, "[401]" is an auth error."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bodies: list[dict[str, Any]] = []
        self.failures: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload, headers = server.reply(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.lock:
            self.bodies.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(0.05)  # long enough for concurrent requests to overlap
            content = body["messages"][0]["content"]
            image_part = next(part for part in content if part["type"] == "image_url")
            text = next(part for part in content if part["type"] == "text")["text"]
            with self.lock:
                seen = self.failures[text] = self.failures.get(text, 0) + 1
            if "[401]" in text:
                return (
                    401,
                    {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}},
                    {},
                )
            if "[429]" in text and seen == 1:
                return (
                    429,
                    {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}},
                    {"Retry-After": "0"},
                )
            if ("[500]" in text and seen <= 2) or "[503!]" in text:
                return (503 if "!" in text else 500), {"error": {"message": "server is busy"}}, {}
            answer = "yes" if dominant_colour(image_part["image_url"]["url"]) in text else "no"
            return 200, completion(body, answer, prompt_tokens=100 + len(text)), {}
        finally:
            with self.lock:
                self.in_flight -= 1


def dominant_colour(data_url: str) -> str:
    header, encoded = data_url.split(",", 1)
    assert header == "data:image/png;base64"
    pixel = Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB").getpixel((3, 3))
    return min(COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOURS[name], pixel)))


def completion(body: dict[str, Any], answer: str, prompt_tokens: int) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": answer},
        "finish_reason": "stop",
    }
    if body.get("logprobs"):
        p_yes = 0.9 if answer == "yes" else 0.15
        top = [
            {"token": "yes", "logprob": math.log(p_yes), "bytes": None},
            {"token": "no", "logprob": math.log(0.99 - p_yes), "bytes": None},
            {"token": " Yes", "logprob": math.log(0.01), "bytes": None},
        ]
        choice["logprobs"] = {
            "content": [{"token": answer, "logprob": math.log(0.9), "bytes": None, "top_logprobs": top}]
        }
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
    }


@pytest.fixture()
def server() -> Iterator[FakeChatServer]:
    fake = FakeChatServer()
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPGBENCH_TEST_KEY", "sk-test")


def make(server: FakeChatServer, **options: Any) -> OpenAIVlmJudge:
    defaults = {"base_url": server.url, "api_key_env": "DPGBENCH_TEST_KEY", "backoff": 0.01}
    return OpenAIVlmJudge(OpenAIVlmConfig(**{**defaults, **options}))


def swatch(colour: str) -> Image.Image:
    return Image.new("RGB", (16, 16), COLOURS[colour])


def test_answers_images_and_request_format(server):
    judge = make(server, model="gpt-4o", detail="low")
    questions = ["Is the square red?", "Is the square blue?", "Is it green?"]
    assert judge.ask_batch([swatch("red"), swatch("green")], [questions, questions]) == [
        ["yes", "no", "no"],
        ["no", "no", "yes"],
    ]
    body = server.bodies[0]
    assert (body["model"], body["temperature"], body["max_completion_tokens"], body["seed"]) == (
        "gpt-4o",
        0,
        5,
        0,
    )
    parts = body["messages"][0]["content"]
    assert parts[0]["image_url"]["detail"] == "low"
    assert parts[1]["text"].endswith("Answer with yes or no.")
    assert "logprobs" not in body
    usage = judge.info()["usage"]
    prompt_tokens = 2 * sum(100 + len(q + " Answer with yes or no.") for q in questions)
    assert (usage["questions"], usage["requests"], usage["retries"]) == (6, 6, 0)
    assert (usage["input_tokens"], usage["output_tokens"]) == (prompt_tokens, 6)
    assert usage["cost_usd"] == pytest.approx((prompt_tokens * 2.50 + 6 * 10.00) / 1e6)


def test_retries_on_429_and_5xx_then_succeed(server):
    judge = make(server)
    answers = judge.ask(swatch("blue"), ["[429] blue?", "[500] blue?", "red?"])
    assert answers == ["yes", "yes", "no"]
    usage = judge.info()["usage"]
    assert (usage["requests"], usage["retries"], usage["questions"]) == (6, 3, 3)  # 429 once, 500 twice


def test_gives_up_with_one_clear_line(server):
    judge = make(server, max_retries=2)
    with pytest.raises(
        DpgBenchError, match=r"gave up after 3 attempts \(InternalServerError: server is busy\)"
    ):
        judge.ask(swatch("red"), ["[503!] red?"])
    assert sum(1 for body in server.bodies if "[503!]" in body["messages"][0]["content"][1]["text"]) == 3


def test_first_failure_stops_the_other_questions(server):
    """An API that is down fails the call after one question's retries, not after every question's."""
    judge = make(server, max_retries=2, backoff=0.3, concurrency=2)
    questions = [f"[503!] red? ({k})" for k in range(20)]
    start = time.perf_counter()
    with pytest.raises(DpgBenchError, match="gave up after 3 attempts"):
        judge.ask(swatch("red"), questions)
    # Two workers: the first two questions fail, wait ~0.3 s and ~0.6 s, fail again and the first to reach
    # its limit ends the call; the 18 queued questions are never sent and the other worker's wait is cut.
    assert len(server.bodies) <= 6
    assert time.perf_counter() - start < 3.0  # each of 20 questions to its limit: >= 10 x 0.9 s
    assert judge.usage.requests == len(server.bodies)


def test_auth_error_names_the_key_variable(server):
    judge = make(server)
    with pytest.raises(
        DpgBenchError, match="AuthenticationError: Incorrect API key provided; check DPGBENCH_TEST_KEY"
    ):
        judge.ask(swatch("red"), ["[401] red?"])


def test_concurrency_limit(server):
    judge = make(server, concurrency=3)
    questions = [f"is it red? ({k})" for k in range(12)]
    start = time.perf_counter()
    assert judge.ask(swatch("red"), questions) == ["yes"] * 12
    assert server.max_in_flight == 3
    assert time.perf_counter() - start < 12 * 0.05  # ran in parallel, not one after another


def test_scores_from_top_logprobs(server):
    judge = make(server)
    scored = judge.ask_with_scores(swatch("green"), ["green?", "red?"])
    assert [a for a, _ in scored] == ["yes", "no"]
    # "yes" and " Yes" both count: 0.9 + 0.01, and 0.15 + 0.01
    assert [p for _, p in scored] == pytest.approx([0.91, 0.16])
    assert server.bodies[-1]["logprobs"] is True and server.bodies[-1]["top_logprobs"] == 5


def test_unknown_model_cost_and_config_errors(server, monkeypatch):
    judge = make(server, model="my-local-vlm")
    judge.ask(swatch("red"), ["red?"])
    assert judge.info()["usage"]["cost_usd"] is None and judge.info()["prices_per_mtok"] is None
    priced = make(server, model="my-local-vlm", input_price=1.0, output_price=2.0)
    priced.ask(swatch("red"), ["red?"])
    assert priced.info()["usage"]["cost_usd"] == pytest.approx(
        (100 + len("red? Answer with yes or no.") + 2) / 1e6
    )
    monkeypatch.delenv("DPGBENCH_TEST_KEY")
    with pytest.raises(DpgBenchError, match="set DPGBENCH_TEST_KEY to your API key"):
        make(server)
    monkeypatch.setenv("DPGBENCH_TEST_KEY", "x")
    with pytest.raises(DpgBenchError, match="detail=huge: use low, high or auto"):
        make(server, detail="huge")


def test_registry_builds_it(server):
    judge = registry.create(
        JUDGES,
        "openai-vlm",
        "judge",
        {"base_url": server.url, "api_key_env": "DPGBENCH_TEST_KEY", "concurrency": "2"},
    )
    assert judge.ask(swatch("blue"), ["blue?"]) == ["yes"]
    json.dumps(judge.info())


cli = invoke


def test_score_through_the_cli_records_retries_and_cost(server, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        cli(["generate", "--backend", "dummy", "--prompts", "demo", "--limit", "2", "--out", run], capsys)[0]
        == 0
    )
    options = [f"base_url={server.url}", "api_key_env=DPGBENCH_TEST_KEY", "backoff=0.01"]
    # every question is refused once with 429 (Retry-After: 0), then answered
    flaky = options + ["prompt={question} [429] Answer with yes or no."]
    args = ["score", run, "--judge", "openai-vlm", *[x for o in flaky for x in ("--judge-arg", o)]]
    code, out, err = cli(args, capsys)
    assert code == 0, err
    answers = [json.loads(line) for line in (run / "eval" / "openai-vlm" / "answers.jsonl").open()]
    texts = [b["messages"][0]["content"][1]["text"] for b in server.bodies]
    n = len(answers)
    # The first two demo prompts: 12 and 14 distinct questions, 4 images each. The server refuses each
    # question text once (its first image), so 26 retries; it bills 100 + len(prompt) input tokens.
    distinct = set(texts)
    assert (n, len(distinct), len(texts)) == (4 * (12 + 14), 26, 4 * 26 + 26)
    summary = json.loads((run / "eval" / "openai-vlm" / "summary.json").read_text())
    usage = summary["judge_usage"]
    tokens_in = 4 * sum(100 + len(t) for t in distinct)
    assert (usage["calls"], usage["questions"], usage["requests"], usage["retries"]) == (1, n, n + 26, 26)
    assert (usage["input_tokens"], usage["output_tokens"]) == (tokens_in, n)
    assert usage["cost_usd"] == pytest.approx((tokens_in * 2.50 + n * 10.00) / 1e6)
    cost = (tokens_in * 2.50 + n * 10.00) / 1e6
    assert (
        f"judge usage (this call): {n} question(s), {n + 26} request(s), 26 retries, "
        f"{tokens_in:,} + {n:,} tokens, ${cost:.4f}" in out
    )
    # resumed: nothing asked, the judge not even built, the totals unchanged
    code, out, err = cli(args, capsys)
    assert code == 0 and f"0 question(s) asked, {n} from cache" in out
    assert json.loads((run / "eval" / "openai-vlm" / "summary.json").read_text())["judge_usage"] == usage

    # an API that stays down: one line, exit 1, and what it spent is on record
    down = options + ["prompt={question} [503!] Answer with yes or no.", "max_retries=1"]
    args = [
        "score",
        run,
        "--judge",
        "openai-vlm",
        "--label",
        "down",
        *[x for o in down for x in ("--judge-arg", o)],
    ]
    before = len(server.bodies)
    code, out, err = cli(args, capsys)
    assert code == 1 and "gave up after 2 attempts" in err and "run the same command again to resume" in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (the bar is on stderr too)
    assert "Traceback" not in err and len(errors) == 1, err
    spent = [json.loads(line) for line in (run / "eval" / "down" / "usage.jsonl").open()]
    assert len(spent) == 1 and spent[0]["requests"] == len(server.bodies) - before <= 2 * 4
    assert spent[0]["questions"] == 0 and spent[0]["cost_usd"] == 0.0
