"""The `llm4gen-sd15` backend: SD 1.5 with LLM4GEN's fine-tuned UNet and Cross-Adapter Module (CAM).

Per prompt, CLIP (77 tokens) and RankGen-T5-XL (256 tokens, "pre " prefix) each run once for the prompt and
the negative prompt together; the CAM fuses them into 77 + 256 conditioning tokens. Defaults follow
YUHANG-Ma/LLM4GEN `infer_llm4gen_sd15.py`: the SD 1.5 pipeline's defaults (PNDM, 50 steps, guidance 7.5),
512 px, the UNet and `projector.pth` of Shui-VL/LLM4GEN-models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dpgbench.backends.diffusers_pipeline import (
    DiffusersBackend,
    DiffusersConfig,
    is_out_of_memory,
    one_line,
    option,
)
from dpgbench.backends.ella import tsc_provenance
from dpgbench.errors import DpgBenchError

if TYPE_CHECKING:
    from PIL import Image

HELP = {
    "unet": "LLM4GEN's fine-tuned UNet: hub repo id or local folder",
    "unet_subfolder": "subfolder of `unet` holding it (empty = the folder itself)",
    "adapter": "CAM weights: hub repo id (with adapter_file) or a local projector.pth / folder",
    "adapter_file": "file name of the CAM inside the hub repo or folder",
    "adapter_revision": "hub branch, tag or commit of the UNet and CAM repo",
    "llm": "RankGen T5 encoder: hub id or local folder (declared in dpgbench, no remote code runs)",
    "llm_tokenizer": "tokenizer of the RankGen encoder (empty = the T5 v1.1 one for hub ids, the folder's own)",
    "llm_tokens": "RankGen tokens per prompt (256 as released)",
    "heads": "CAM attention heads (projector.pth does not record it)",
}


def llm4gen_option(default: Any, key: str) -> Any:
    return field(default=default, metadata={"help": HELP[key]})


@dataclass
class LLM4GENConfig(DiffusersConfig):
    model: str = option("stable-diffusion-v1-5/stable-diffusion-v1-5", "model")
    steps: int | None = option(50, "steps")
    guidance: float | None = option(7.5, "guidance")
    width: int | None = option(512, "width")
    height: int | None = option(512, "height")
    unet: str = llm4gen_option("Shui-VL/LLM4GEN-models", "unet")
    unet_subfolder: str = llm4gen_option("unet", "unet_subfolder")
    adapter: str = llm4gen_option("Shui-VL/LLM4GEN-models", "adapter")
    adapter_file: str = llm4gen_option("projector.pth", "adapter_file")
    adapter_revision: str = llm4gen_option("main", "adapter_revision")
    llm: str = llm4gen_option("kalpeshk2011/rankgen-t5-xl-all", "llm")
    llm_tokenizer: str = llm4gen_option("", "llm_tokenizer")
    llm_tokens: int = llm4gen_option(256, "llm_tokens")
    heads: int = llm4gen_option(8, "heads")


class LLM4GENBackend(DiffusersBackend):
    Config = LLM4GENConfig
    name = "llm4gen-sd15"
    pipeline_classes = ("StableDiffusionPipeline",)
    config: LLM4GENConfig

    def load_kwargs(self) -> dict[str, Any]:
        from diffusers import UNet2DConditionModel

        c = self.config
        try:
            unet = UNet2DConditionModel.from_pretrained(
                c.unet,
                subfolder=c.unet_subfolder or None,
                torch_dtype=self.dtype,
                revision=c.adapter_revision,
            )
        except (OSError, ValueError) as exc:
            raise DpgBenchError(
                f"backend '{self.name}': cannot load the LLM4GEN UNet from {c.unet!r} "
                f"(subfolder {c.unet_subfolder!r}: {one_line(exc)}); download it and pass unet=DIR"
            ) from exc
        return {
            "unet": unet,
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }

    def _load(self) -> Any:
        from ella import CheckpointError, RankGenEmbedder, load_llm4gen_adapter

        pipe = super()._load()
        c = self.config
        try:
            self.adapter = load_llm4gen_adapter(
                c.adapter,
                c.adapter_file,
                heads=c.heads,
                revision=c.adapter_revision,
                dtype=self.dtype,
                device=self.device,
            )
        except CheckpointError as exc:
            raise DpgBenchError(f"backend '{self.name}': {exc}") from exc
        self.adapter_source = tsc_provenance(c.adapter, c.adapter_file)
        clip_width = pipe.text_encoder.config.hidden_size
        if (
            self.adapter.config["clip_dim"] != clip_width
            or pipe.unet.config.cross_attention_dim != clip_width
        ):
            raise DpgBenchError(
                f"backend '{self.name}': the CAM works on {self.adapter.config['clip_dim']}-wide CLIP tokens, "
                f"the base's CLIP gives {clip_width} and its UNet takes {pipe.unet.config.cross_attention_dim}; "
                "use an SD 1.x base (model=...) with LLM4GEN's UNet"
            )
        try:
            self.llm = RankGenEmbedder.from_pretrained(
                c.llm,
                tokenizer=c.llm_tokenizer or None,
                dtype=self.dtype,
                device=self.device,
                max_length=c.llm_tokens,
            )
        except (OSError, ValueError) as exc:
            raise DpgBenchError(
                f"backend '{self.name}': cannot load the RankGen encoder {c.llm!r} ({one_line(exc)}); "
                "download it and pass the folder: --backend-arg llm=DIR"
            ) from exc
        if self.llm.hidden_size != self.adapter.config["llm_dim"]:
            raise DpgBenchError(
                f"backend '{self.name}': the encoder {c.llm!r} makes {self.llm.hidden_size}-wide features but "
                f"the CAM's llm_proj takes {self.adapter.config['llm_dim']}: use the RankGen-T5-XL the adapter "
                "was trained with (--backend-arg llm=DIR)"
            )
        return pipe

    def conditioning(self, prompt: str) -> Any:
        """(2, 77 + llm_tokens, 768): CAM(CLIP, RankGen) of the prompt, then of the negative prompt."""
        import torch

        texts = [prompt, self.config.negative_prompt]
        pipe = self.pipe
        with torch.no_grad():
            ids = pipe.tokenizer(
                texts,
                padding="max_length",
                max_length=pipe.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            clip = pipe.text_encoder(ids.to(self.device))[0]  # last hidden state, as released
            llm = self.llm(texts)
            return self.adapter(clip, llm).to(self.dtype)

    def generate(self, prompt: str, seeds: Sequence[int]) -> list[Image.Image]:
        import torch

        # 1. Both encoders once for this prompt and its negative, fused by the CAM.
        embeds = self.conditioning(prompt)
        images: list[Image.Image] = []
        size = self.config.batch_size
        for start in range(0, len(seeds), size):
            chunk = list(seeds[start : start + size])
            # 2. Padded fixed-shape batches with per-image CPU generators, as in the diffusers backend.
            padded = chunk + [chunk[-1]] * (size - len(chunk)) if self.pad_batches else chunk
            generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in padded]
            rows = len(padded)
            try:
                out = self.pipe(
                    prompt_embeds=embeds[:1].expand(rows, -1, -1),
                    negative_prompt_embeds=embeds[1:].expand(rows, -1, -1),
                    generator=generators,
                    output_type="pil",
                    **self.pipeline_arguments(),
                )
            except Exception as exc:
                if is_out_of_memory(exc):
                    self.pad_batches = False
                raise
            images.extend(out.images[: len(chunk)])
        return images

    def pipeline_arguments(self) -> dict[str, Any]:
        args = super().pipeline_arguments()
        args.pop("negative_prompt", None)  # already inside negative_prompt_embeds
        return args

    def info(self) -> dict[str, Any]:
        c = self.config
        return super().info() | {
            "unet": {"model": c.unet, "subfolder": c.unet_subfolder, "revision": c.adapter_revision},
            "adapter": {"checkpoint": c.adapter, "file": c.adapter_file, "revision": c.adapter_revision}
            | self.adapter_source
            | {"config": {k: v for k, v in self.adapter.config.items() if not k.startswith("_")}},
            "llm": {
                "model": c.llm,
                "tokenizer": c.llm_tokenizer or None,
                "tokens": c.llm_tokens,
                "prefix": "pre ",
                "dtype": str(self.llm.model.dtype).removeprefix("torch."),
            },
            "text_encoder_calls_per_prompt": 1,
        }
