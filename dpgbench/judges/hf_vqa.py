"""Transformers VQA judges: BLIP VQA, and any `image-text-to-text` VLM (Qwen2-VL, LLaVA, ...) asked yes/no.

Owns loading the model and processor (hub id or local folder, offline when asked), answering all questions of
an image in batches with greedy decoding, and the optional probability of "yes" for the first answer token
(VQAScore-style soft score), exposed by `ask_with_scores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dpgbench.errors import DpgBenchError

if TYPE_CHECKING:
    import torch
    from PIL import Image

DEFAULT_MODEL = "Salesforce/blip-vqa-base"

# Spellings whose first token counts as "yes" when a VLM's first-token probability is read. Only words that
# are a single token in the model's vocabulary are used, so the sum is a probability of whole words.
YES_SPELLINGS = ("yes", "Yes", "YES", " yes", " Yes", " YES")


@dataclass
class HfVqaJudgeConfig:
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "hub id or local folder (BLIP VQA or a VLM)"})
    revision: str | None = field(default=None, metadata={"help": "hub revision (branch, tag or commit)"})
    prompt: str = field(
        default="{question} Answer with yes or no.",
        metadata={"help": "VLMs only: the user message after the image; {question} is replaced"},
    )
    max_new_tokens: int = field(default=10, metadata={"help": "longest answer, in tokens (greedy decoding)"})
    batch_size: int = field(default=16, metadata={"help": "questions of one image per forward pass"})
    device: str = field(
        default="auto",
        metadata={"help": "cuda, cuda:N, cpu, or auto (cuda:$LOCAL_RANK when a GPU is present)"},
    )
    dtype: str = field(
        default="auto", metadata={"help": "fp32, fp16, bf16, or auto (fp16 on GPU, fp32 on CPU)"}
    )
    offline: bool = field(default=False, metadata={"help": "use only files already in the local HF cache"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub repo"})


class HfVqaJudge:
    """BLIP VQA (encoder-decoder, image encoded once per image) or a chat VLM prompted for yes/no."""

    Config = HfVqaJudgeConfig

    def __init__(self, config: HfVqaJudgeConfig) -> None:
        import torch
        from transformers import AutoConfig, AutoProcessor

        from dpgbench.judges.mplug import pick_device, pick_dtype

        self.config = config
        self.device = torch.device(pick_device(config.device))
        self.dtype = pick_dtype(config.dtype, self.device)
        where = {
            "revision": config.revision,
            "local_files_only": config.offline,
            "trust_remote_code": config.trust_remote_code,
        }
        try:
            model_config = AutoConfig.from_pretrained(config.model, **where)
            self.processor = AutoProcessor.from_pretrained(config.model, **where)
        except OSError as exc:
            hint = " (offline=true: download it first, or pass a local folder)" if config.offline else ""
            raise DpgBenchError(f"judge option model={config.model}: cannot load it{hint}: {exc}") from exc
        self.kind = "blip" if model_config.model_type == "blip" else "vlm"
        if self.kind == "blip":
            from transformers import BlipForQuestionAnswering

            self.model = BlipForQuestionAnswering.from_pretrained(
                config.model, torch_dtype=self.dtype, **where
            )
            self.tokenizer = self.processor.tokenizer
            self.yes_ids = [self.tokenizer.convert_tokens_to_ids("yes")]
        else:
            from transformers import AutoModelForImageTextToText

            try:
                self.model = AutoModelForImageTextToText.from_pretrained(
                    config.model, torch_dtype=self.dtype, **where
                )
            except ValueError as exc:  # the config maps to no image-text-to-text class
                raise DpgBenchError(
                    f"judge option model={config.model}: {model_config.model_type} is neither BLIP VQA nor an "
                    "image-text-to-text model; pick a VLM such as Qwen/Qwen2-VL-2B-Instruct"
                ) from exc
            self.tokenizer = self.processor.tokenizer
            # Decoder-only generation continues from the end of each row, so pad on the left.
            self.tokenizer.padding_side = "left"
            self.yes_ids = yes_token_ids(self.tokenizer)
        self.model.to(self.device).eval()

    # -- the Judge contract ------------------------------------------------------------------------

    def ask(self, image: Image.Image, questions: Sequence[str]) -> list[str]:
        return [answer for answer, _ in self.answer(image, questions, with_scores=False)]

    def ask_with_scores(self, image: Image.Image, questions: Sequence[str]) -> list[tuple[str, float]]:
        """(raw answer, probability that the first answer token is "yes") per question."""
        return self.answer(image, questions, with_scores=True)

    def ask_batch(
        self, images: Sequence[Image.Image], questions_per_image: Sequence[Sequence[str]]
    ) -> list[list[str]]:
        return [
            self.ask(image, questions) for image, questions in zip(images, questions_per_image, strict=True)
        ]

    def info(self) -> dict[str, Any]:
        import torch
        import transformers

        return {
            "name": "hf-vqa",
            "kind": self.kind,
            "model": self.config.model,
            "revision": self.config.revision,
            "commit": getattr(self.model.config, "_commit_hash", None),
            "model_type": self.model.config.model_type,
            "prompt": self.config.prompt if self.kind == "vlm" else "(question as is)",
            "decoding": {"greedy": True, "max_new_tokens": self.config.max_new_tokens},
            "yes_token_ids": self.yes_ids,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "batch_size": self.config.batch_size,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }

    # -- steps -------------------------------------------------------------------------------------

    def answer(
        self, image: Image.Image, questions: Sequence[str], with_scores: bool
    ) -> list[tuple[str, float]]:
        import torch

        if self.kind == "vlm":
            out: list[tuple[str, float]] = []
            with torch.no_grad():
                for start in range(0, len(questions), self.config.batch_size):
                    chunk = list(questions[start : start + self.config.batch_size])
                    out += self.answer_vlm(image, chunk, with_scores)
            return out
        # BLIP: transformers 4.57's BlipTextLayer hands the cross-attention mask over under the wrong keyword,
        # so the decoder attends to question padding. Batches of questions of equal token length need none,
        # and answer exactly as one question per call.
        by_length: dict[int, list[int]] = {}
        for k, question in enumerate(questions):
            by_length.setdefault(len(self.tokenizer(question).input_ids), []).append(k)
        answers: list[tuple[str, float]] = [("", float("nan"))] * len(questions)
        with torch.no_grad():
            image_embeds = self.encode_blip_image(image)
            for indices in by_length.values():
                for start in range(0, len(indices), self.config.batch_size):
                    group = indices[start : start + self.config.batch_size]
                    scored = self.answer_blip(image_embeds, [questions[k] for k in group], with_scores)
                    for k, result in zip(group, scored, strict=True):
                        answers[k] = result
        return answers

    def encode_blip_image(self, image: Image.Image) -> torch.Tensor:
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
        embeds: torch.Tensor = self.model.vision_model(pixel_values=pixels.to(self.device, self.dtype))[0]
        return embeds

    def answer_blip(
        self, image_embeds: torch.Tensor, questions: list[str], with_scores: bool
    ) -> list[tuple[str, float]]:
        """BlipForQuestionAnswering.generate's steps for questions of one token length, image encoded once."""
        import torch

        model, text_config = self.model, self.model.config.text_config
        n = len(questions)
        # 1. Questions through the text encoder, attending to the (shared) image states.
        tokens = self.tokenizer(questions, return_tensors="pt").to(self.device)  # equal lengths: no padding
        embeds = image_embeds.expand(n, -1, -1)
        image_mask = torch.ones(embeds.shape[:-1], dtype=torch.long, device=self.device)
        question_states = model.text_encoder(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            encoder_hidden_states=embeds,
            encoder_attention_mask=image_mask,
            return_dict=False,
        )[0]
        # 2. Greedy answer from the decoder, starting at BLIP's decoder start token.
        start = torch.full((n, 1), model.decoder_start_token_id, device=self.device)
        generated = model.text_decoder.generate(
            input_ids=start,
            eos_token_id=text_config.sep_token_id,
            pad_token_id=text_config.pad_token_id,
            encoder_hidden_states=question_states,
            encoder_attention_mask=tokens.attention_mask,
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            num_beams=1,
            output_logits=with_scores,
            return_dict_in_generate=True,
        )
        answers = [
            a.strip() for a in self.tokenizer.batch_decode(generated.sequences, skip_special_tokens=True)
        ]
        return list(zip(answers, self.yes_probability(generated.logits if with_scores else None, n)))

    def answer_vlm(
        self, image: Image.Image, questions: list[str], with_scores: bool
    ) -> list[tuple[str, float]]:
        """One chat turn per question (image + prompt), all rows of the batch in one greedy generate call."""
        texts = [
            self.processor.apply_chat_template(
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image"},
                            {"type": "text", "text": self.config.prompt.format(question=q)},
                        ],
                    }
                ],
                add_generation_prompt=True,
                tokenize=False,
            )
            for q in questions
        ]
        image = image.convert("RGB")
        inputs = self.processor(
            images=[image] * len(questions), text=texts, padding=True, return_tensors="pt"
        )
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        generated = self.model.generate(
            **inputs,
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            num_beams=1,
            output_logits=with_scores,
            return_dict_in_generate=True,
        )
        new_tokens = generated.sequences[:, inputs["input_ids"].shape[1] :]
        answers = [a.strip() for a in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return list(
            zip(answers, self.yes_probability(generated.logits if with_scores else None, len(questions)))
        )

    def yes_probability(self, logits: Sequence[torch.Tensor] | None, n: int) -> list[float]:
        """Softmax of the first generated position's raw logits, summed over the "yes" tokens (NaN if unasked)."""
        if logits is None:
            return [float("nan")] * n
        probabilities = logits[0].float().softmax(-1)
        return probabilities[:, self.yes_ids].sum(-1).tolist()


def yes_token_ids(tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for spelling in YES_SPELLINGS:
        encoded = tokenizer.encode(spelling, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    return ids
