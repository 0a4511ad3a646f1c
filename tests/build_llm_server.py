"""A small OpenAI-compatible chat server for the build tests, on 127.0.0.1 in a background thread.

It answers `POST /v1/chat/completions` from recorded replies chosen by the request (stage + prompt + how many
times the model was already told its answer was rejected), so it is stateless and a rerun sees the same
conversation. Faults are queued per prompt: "401", "429" (Retry-After 0), "500", "timeout" (answers too late).
`delay` makes every answer take that long, and `max_in_flight` records how many requests overlapped at most.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REJECTED = "That answer was rejected"


def conversation_round(messages: list[dict[str, Any]]) -> int:
    """How many answers of this conversation were rejected so far (0 for a first ask)."""
    return sum(1 for m in messages if m["role"] == "user" and m["content"].startswith(REJECTED))


def original_ask(messages: list[dict[str, Any]]) -> str:
    """The template's last user turn (before any rejection rounds)."""
    return messages[len(messages) - 1 - 2 * conversation_round(messages)]["content"]


class FakeChatServer:
    def __init__(
        self, reply: Callable[[dict[str, Any]], str], timeout_sleep: float = 1.5, delay: float = 0.0
    ) -> None:
        self.reply = reply  # request body -> assistant message content
        self.faults: dict[str, list[str]] = {}  # substring of the original ask -> faults, applied in order
        self.received: list[dict[str, Any]] = []
        self.timeout_sleep = timeout_sleep
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fault = server._take_fault(body)
                # Counted while the answer is "being written" only, never after it is sent: the client
                # may send its next request the moment it has this reply.
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                time.sleep(server.delay)
                with server._lock:
                    server.in_flight -= 1
                try:
                    if fault == "timeout":
                        time.sleep(server.timeout_sleep)
                    if fault in ("401", "429", "500"):
                        self._send(int(fault), {"error": {"message": f"injected {fault}", "type": "test"}})
                        return
                    content = server.reply(body)
                    prompt_words = sum(len(m["content"].split()) for m in body["messages"])
                    self._send(
                        200,
                        {
                            "id": f"chatcmpl-{len(server.received)}",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body["model"],
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {
                                "prompt_tokens": prompt_words,
                                "completion_tokens": len(content.split()),
                                "total_tokens": prompt_words + len(content.split()),
                            },
                        },
                    )
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout case)

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _take_fault(self, body: dict[str, Any]) -> str | None:
        with self._lock:
            self.received.append(body)
            ask = original_ask(body["messages"])
            fault = next(
                (queue.pop(0) for marker, queue in self.faults.items() if marker in ask and queue), None
            )
            body["_fault"] = fault  # kept with the request, for the test's bookkeeping
            return fault

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
