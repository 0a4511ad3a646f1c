"""How much the build client's concurrency limit and request cache save, against a local server with latency.

Starts an OpenAI-compatible server on 127.0.0.1 that answers every chat request after LATENCY seconds, then
sends N distinct requests through `dpgbench.build.llm.LLMClient` with concurrency 1 (the baseline) and 8, and
replays them from the cache. Prints requests/s and the ratios. Run: python benchmarks/build_llm_client.py
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dpgbench.build.llm import LLMClient, LLMConfig

LATENCY = 0.05  # seconds per answer, a fast hosted model's time to first byte is 10x that
N = 40


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(LATENCY)
        content = json.dumps({"echo": body["messages"][-1]["content"]})
        data = json.dumps(
            {
                "id": "x",
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
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def run(base_url: str, cache: Path, concurrency: int, tag: str) -> float:
    config = LLMConfig(model="bench", base_url=base_url, concurrency=concurrency, timeout=10)
    started = time.perf_counter()
    with LLMClient(config, cache) as client, ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda i: client.complete([{"role": "user", "content": f"{tag} {i}"}]), range(N)))
    return time.perf_counter() - started


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache.jsonl"
        run(base_url, Path(tmp) / "warmup.jsonl", 1, "warmup")  # imports openai, opens the connection
        serial = run(base_url, cache, 1, "serial")
        parallel = run(base_url, cache, 8, "parallel")
        replay = run(base_url, cache, 8, "parallel")
    server.shutdown()
    print(f"{N} requests, {LATENCY * 1000:.0f} ms server latency")
    print(f"concurrency 1 (baseline): {N / serial:8.1f} requests/s")
    print(
        f"concurrency 8:            {N / parallel:8.1f} requests/s  ({serial / parallel:.1f}x the baseline)"
    )
    print(f"cache replay:             {N / replay:8.1f} requests/s  ({serial / replay:.0f}x the baseline)")


if __name__ == "__main__":
    main()
