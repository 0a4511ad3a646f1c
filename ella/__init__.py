"""ELLA (Timestep-Aware Semantic Connector) and LLM4GEN (Cross-Adapter Module) for diffusers pipelines.

Usable on its own: it never imports dpgbench. Model code lives in `model.py` / `llm4gen.py`, weights
loading in `checkpoint.py` (its `CheckpointError` in `errors.py`), T5 features in `text_encoder.py`, the
UNet wrapper in `unet_proxy.py`, inference helpers in `pipeline.py`, training in `train.py`
(`python -m ella.train`).
"""

from ella.checkpoint import CheckpointError, check_base, load_llm4gen_adapter, load_tsc
from ella.llm4gen import LLM4GENAdapter, RankGenEmbedder, RankGenT5Encoder
from ella.model import ELLA, AttentionCapture

__all__ = [
    "ELLA",
    "AttentionCapture",
    "CheckpointError",
    "LLM4GENAdapter",
    "RankGenEmbedder",
    "RankGenT5Encoder",
    "check_base",
    "load_llm4gen_adapter",
    "load_tsc",
]
