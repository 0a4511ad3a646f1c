"""Benchmark construction: the tooling that makes new prompt sets and question graphs with an LLM.

Never imported by the rest of dpgbench (only `cli_build.py` loads it). `llm` is the cached, rate-limited
client; `dense_prompts` and `graphs` are the two GPT-4 stages; `review` is the human check; `stats` and
`clip_tokens` measure prompt sets as the paper's Table 2 does.
"""
