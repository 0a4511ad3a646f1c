"""mPLUG-large visual question answering through modelscope: the DPG-Bench reference judge, batched.

Owns finding the model folder (a local path, else the modelscope cache, downloading only when it is missing),
the official pipeline's preprocessing, and an answer loop that encodes each image once and decodes all of its
questions together. Answers equal `pipeline(Tasks.visual_question_answering, model=...)` asked one at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpgbench.errors import DpgBenchError

if TYPE_CHECKING:
    import torch
    from PIL import Image

DEFAULT_MODEL = "damo/mplug_visual-question-answering_coco_large_en"

# The official preprocessing, as modelscope 1.40.2's MPlugPreprocessor does it: CLIP's mean/std after a
# bicubic resize to `image_res` (config.yaml), the question lower-cased and padded/truncated to 25 tokens.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
QUESTION_TOKENS = 25

# Files of a modelscope mPLUG folder (modelscope.utils.constant.ModelFile names them the same way).
CONFIGURATION = "configuration.json"
MODEL_CONFIG = "config.yaml"
VOCAB = "vocab.txt"
WEIGHTS = "pytorch_model.bin"

# Checkpoint entries the VQA forward pass never reads, so their absence is harmless: buffers rebuilt at
# init, the LM head's bias alias, CLIP's text tower and output projection (skip_last_layer=True skips it).
UNUSED_KEY_PARTS = ("position_ids", "predictions.decoder.bias", "visual_encoder.visual.proj")


@dataclass
class MplugJudgeConfig:
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "modelscope id (damo/... or iic/...) or a local folder with config.yaml and weights"
        },
    )
    revision: str | None = field(default=None, metadata={"help": "modelscope revision; default: master"})
    cache_dir: str | None = field(default=None, metadata={"help": "modelscope cache folder; default: theirs"})
    offline: bool = field(default=False, metadata={"help": "never download; fail if the model is not cached"})
    device: str = field(
        default="auto",
        metadata={"help": "cuda, cuda:N, cpu, or auto (cuda:$LOCAL_RANK when a GPU is present)"},
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "fp32, fp16, bf16, or auto (fp16 on GPU, fp32 on CPU; fp32 = official)"},
    )
    image_batch: int = field(default=8, metadata={"help": "images through the vision tower at once"})
    question_batch: int = field(
        default=16, metadata={"help": "questions decoded together (x5 beams); memory grows with it"}
    )
    strict_weights: bool = field(
        default=True, metadata={"help": "refuse checkpoints that lack weights the answer path uses"}
    )


class MplugJudge:
    """`damo/mplug_visual-question-answering_coco_large_en`, answering like modelscope's pipeline, faster."""

    Config = MplugJudgeConfig

    def __init__(self, config: MplugJudgeConfig) -> None:
        import torch
        from transformers import BertTokenizer

        self.config = config
        self.folder = resolve_folder(config.model, config.revision, config.cache_dir, config.offline)
        self.device = torch.device(pick_device(config.device))
        self.dtype = pick_dtype(config.dtype, self.device)
        self.model, self.missing_keys = load_vqa_model(self.folder, config.strict_weights)
        self.model.to(device=self.device, dtype=self.dtype)
        self.image_res = int(self.model.config.image_res)
        # The pipeline tokenizes questions with a tokenizer loaded from the folder and decodes answers
        # with the model's own (built from vocab.txt); keep both so any tokenizer_config.json acts alike.
        self.question_tokenizer = BertTokenizer.from_pretrained(str(self.folder))
        self.answer_tokenizer = self.model.tokenizer
        self.shared_cross_attention = install_shared_cross_attention(self.model)
        self._weights_sha256: str | None = None

    # -- the Judge contract ------------------------------------------------------------------------

    def ask(self, image: Image.Image, questions: Sequence[str]) -> list[str]:
        return self.ask_batch([image], [questions])[0]

    def ask_batch(
        self, images: Sequence[Image.Image], questions_per_image: Sequence[Sequence[str]]
    ) -> list[list[str]]:
        """Answers for several images: each image encoded once, its questions decoded in batches."""
        import torch

        if len(images) != len(questions_per_image):
            raise ValueError(f"{len(images)} images but {len(questions_per_image)} question lists")
        if not images:
            return []
        with torch.no_grad():
            # 1. Pixels exactly as the pipeline's preprocessor makes them.
            pixels = [self.preprocess(image) for image in images]
            # 2. Image states, `image_batch` images per pass through the vision tower.
            states = [
                self.encode_images(torch.stack(pixels[start : start + self.config.image_batch]))
                for start in range(0, len(pixels), self.config.image_batch)
            ]
            image_states = torch.cat(states)
            # 3. Every (image, question) pair, `question_batch` pairs per decoding pass.
            pairs = [(i, q) for i, questions in enumerate(questions_per_image) for q in questions]
            flat: list[str] = []
            for start in range(0, len(pairs), self.config.question_batch):
                chunk = pairs[start : start + self.config.question_batch]
                flat += self.answer(image_states, [i for i, _ in chunk], [q for _, q in chunk])
        # 4. Back to one list per image, in the order asked.
        answers: list[list[str]] = []
        for questions in questions_per_image:
            answers.append(flat[: len(questions)])
            flat = flat[len(questions) :]
        return answers

    def info(self) -> dict[str, Any]:
        import modelscope
        import torch
        import transformers

        model_config = self.model.config
        return {
            "name": "mplug-large",
            "model": self.config.model,
            "revision": self.config.revision,
            "folder": str(self.folder),
            "weights_sha256": self.weights_sha256(),
            "missing_weights": len(self.missing_keys),
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "image_res": self.image_res,
            "beam_size": int(model_config.beam_size),
            "answer_max_length": int(model_config.max_length),
            "question_tokens": QUESTION_TOKENS,
            "preprocessing": "RGB, bicubic resize to image_res, CLIP mean/std; question lower-cased",
            "image_batch": self.config.image_batch,
            "question_batch": self.config.question_batch,
            "modelscope": modelscope.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }

    def weights_sha256(self) -> str:
        if self._weights_sha256 is None:  # hashing 2.4 GB takes seconds: once per judge
            self._weights_sha256 = file_sha256(weights_file(self.folder))
        return self._weights_sha256

    # -- steps -------------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One image -> (3, res, res) tensor: RGB, bicubic resize, CLIP normalisation (as the pipeline)."""
        from torchvision import transforms

        transform = transforms.Compose(
            [
                transforms.Resize(
                    (self.image_res, self.image_res), interpolation=transforms.InterpolationMode.BICUBIC
                ),
                transforms.ToTensor(),
                transforms.Normalize(mean=CLIP_MEAN, std=CLIP_STD),
            ]
        )
        tensor: torch.Tensor = transform(image.convert("RGB"))
        return tensor

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, res, res) -> image states (n, tokens, width) as MPlugForVisualQuestionAnswering makes them."""
        model = self.model
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        states: torch.Tensor = model.visual_encoder.visual(pixels, skip_last_layer=True)
        if model.large:  # vision width != text width: the model's projection (dropout is off in eval)
            states = model.dropout(model.visn_layer_norm(model.visn_fc(states)))
        return states

    def answer(self, image_states: torch.Tensor, image_index: list[int], questions: list[str]) -> list[str]:
        """Decode one batch of questions, each about image_states[image_index[k]]."""
        import torch

        model = self.model
        # 1. A fresh copy per question: the fusion encoder's skip-connection layers add into it in place.
        index = torch.tensor(image_index, device=self.device)
        image_embeds = image_states.index_select(0, index)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        # 2. Questions padded to 25 tokens each, so a row never depends on its batch mates.
        tokens = self.question_tokenizer(
            [q.lower() for q in questions],
            padding="max_length",
            truncation=True,
            max_length=QUESTION_TOKENS,
            return_tensors="pt",
        ).to(self.device)
        # 3. Text encoder and fusion, as the model's own forward(train=False).
        text = model.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask, return_dict=True)
        image_out, question_out = model.fusion_encoder(
            encoder_embeds=text.last_hidden_state,
            attention_mask=tokens.attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
            return_dict=False,
        )
        states = torch.cat([image_out, question_out], 1)
        attention = torch.cat([image_atts, tokens.attention_mask], 1)
        # 4. modelscope's own beam search, with the decoder's cross-attention keys/values made once per
        #    question and shared by its beams (see SharedCrossAttention) instead of once per beam and step.
        with self.project_once(states) as carrier:
            best, _scores = model.beam_generator.translate_batch([carrier, attention])
        return [self.answer_tokenizer.decode(hypotheses[0], skip_special_tokens=True) for hypotheses in best]

    @contextlib.contextmanager
    def project_once(self, states: torch.Tensor) -> Iterator[torch.Tensor]:
        """Project `states` once for the decoder's cross-attention; yield the row-number carrier for the beam search."""
        import torch

        for wrapper in self.shared_cross_attention:
            wrapper.fill(states)
        try:
            rows = torch.arange(states.shape[0], device=states.device, dtype=torch.float32)
            yield rows[:, None, None].expand(-1, states.shape[1], 1).contiguous()
        finally:
            for wrapper in self.shared_cross_attention:
                wrapper.fill(None)


# -- model folder ----------------------------------------------------------------------------------


def resolve_folder(model: str, revision: str | None, cache_dir: str | None, offline: bool) -> Path:
    """A local folder as is; a modelscope id from the cache (either org name), downloading only if absent."""
    path = Path(model).expanduser()
    if path.is_dir():
        check_folder(path)
        return path
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise DpgBenchError(
            f"judge option model={model}: no such folder, and not a modelscope id like {DEFAULT_MODEL}"
        )
    from modelscope.hub.snapshot_download import snapshot_download

    # modelscope renamed the `damo` organisation to `iic`; a copy cached under either name will do.
    owner, name = model.split("/")
    aliases = [model] + [f"{other}/{name}" for other in ("damo", "iic") if other != owner]
    for alias in aliases:
        try:
            cached = Path(
                snapshot_download(alias, revision=revision, cache_dir=cache_dir, local_files_only=True)
            )
        except Exception:  # modelscope raises its own "not cached" types; any failure means "look further"
            continue
        if (cached / MODEL_CONFIG).is_file():
            check_folder(cached)
            return cached
    if offline:
        raise DpgBenchError(
            f"judge option model={model} is not in the modelscope cache and offline=true: run "
            f"`modelscope download --model {model}` where the network is reachable, or pass model=/path/to/folder"
        )
    try:
        downloaded = Path(snapshot_download(model, revision=revision, cache_dir=cache_dir))
    except Exception as exc:
        raise DpgBenchError(
            f"judge option model={model}: modelscope download failed ({type(exc).__name__}: {exc}); "
            f"download it elsewhere and pass model=/path/to/folder"
        ) from exc
    check_folder(downloaded)
    return downloaded


def check_folder(folder: Path) -> None:
    for name in (CONFIGURATION, MODEL_CONFIG, VOCAB):
        if not (folder / name).is_file():
            raise DpgBenchError(
                f"{folder / name}: missing; an mPLUG folder needs {CONFIGURATION}, "
                f"{MODEL_CONFIG}, the BERT config it names, {VOCAB} and {WEIGHTS}"
            )
    task = json.loads((folder / CONFIGURATION).read_text(encoding="utf-8")).get("task")
    if task != "visual-question-answering":
        raise DpgBenchError(
            f"{folder / CONFIGURATION}: task is {task!r}, not 'visual-question-answering'; "
            f"use the VQA model {DEFAULT_MODEL}"
        )
    weights_file(folder)


def weights_file(folder: Path) -> Path:
    path = folder / WEIGHTS
    if not path.is_file():
        raise DpgBenchError(f"{path}: missing; the mPLUG weights are needed (re-download the model folder)")
    return path


def load_vqa_model(folder: Path, strict: bool) -> tuple[Any, list[str]]:
    """modelscope's MPlugForVisualQuestionAnswering with the checkpoint loaded as MPlug.from_pretrained does.

    Differences, none of which touch the answers: the momentum ("distill") copies used only in training are
    not built (half the memory), nothing is printed, and missing weights on the answer path are an error.
    """
    import torch

    with quiet_upstream_warnings():
        from modelscope.models.multi_modal.mplug import MPlugConfig
        from modelscope.models.multi_modal.mplug.modeling_mplug import MPlugForVisualQuestionAnswering

    config = MPlugConfig.from_yaml_file(str(folder / MODEL_CONFIG))
    bert_config = folder / config.bert_config
    if not bert_config.is_file():
        raise DpgBenchError(
            f"{folder / MODEL_CONFIG}: bert_config names {config.bert_config}, which is missing"
        )
    config.model_dir = str(folder)
    config.distill = False
    with quiet_upstream_warnings():
        model = MPlugForVisualQuestionAnswering(config)
    # modelscope's CLIP blocks run through torch.utils.checkpoint even in inference (a training-memory
    # device): under no_grad that is the same computation with extra calls and torch's deprecation warning.
    for module in model.modules():
        if getattr(module, "use_grad_ckp", False):
            module.use_grad_ckp = False

    checkpoint = torch.load(weights_file(folder), map_location="cpu", weights_only=True)
    for wrapper in ("model", "module"):  # the unwrapping modelscope does, in its order
        if wrapper in checkpoint:
            checkpoint = checkpoint[wrapper]
    # modelscope strips every "model." in a key (not only a prefix); keep that so the same weights land.
    checkpoint = {key.replace("model.", ""): value for key, value in checkpoint.items()}
    result = model.load_state_dict(checkpoint, strict=False)
    missing = [key for key in result.missing_keys if not is_unused_weight(key)]
    if missing and strict:
        raise DpgBenchError(
            f"{weights_file(folder)}: {len(missing)} weights of the answer path are missing (first: {missing[0]}); "
            "re-download the model, or pass --judge-arg strict_weights=false to load it like modelscope does"
        )
    model.eval()
    return model, missing


def is_unused_weight(key: str) -> bool:
    if any(part in key for part in UNUSED_KEY_PARTS):
        return True
    # CLIP's text tower is built but never run by VQA; only visual_encoder.visual.* is used.
    return key.startswith("visual_encoder.") and not key.startswith("visual_encoder.visual.")


# -- the decoder's cross-attention, once per question -----------------------------------------------


def install_shared_cross_attention(model: Any) -> list[Any]:
    """Wrap every decoder cross-attention (BertSelfAttention) in SharedCrossAttention; returns the wrappers."""
    import math

    import torch
    from modelscope.models.multi_modal.mplug.modeling_mplug import clamp_inf

    beam_size = int(model.config.beam_size)

    class SharedCrossAttention(torch.nn.Module):
        """A decoder cross-attention that projects each question's states once and shares them by its beams.

        modelscope's beam search tiles the question states once per beam and re-gathers them every step, so
        the decoder projects (and copies) the same ~1300 states beams x steps times per question: most of the
        answer time of the large model. Inside `MplugJudge.project_once` the beam search is handed, instead
        of the states, a carrier whose rows hold the row's question number; keys and values are projected
        once per question, and the beams of a question (consecutive rows) attend to them together. The
        arithmetic is BertSelfAttention's (absolute positions, clamp_inf, scale, mask, softmax); outside
        `project_once` (`keys is None`) the wrapped module runs unchanged.
        """

        def __init__(self, attention: torch.nn.Module) -> None:
            super().__init__()
            self.attention: Any = attention  # modelscope's BertSelfAttention
            self.keys: torch.Tensor | None = None  # (questions, heads, tokens, head size)
            self.values: torch.Tensor | None = None

        def fill(self, states: torch.Tensor | None) -> None:
            a = self.attention
            if states is None:
                self.keys = self.values = None
            else:
                self.keys = a.transpose_for_scores(a.key(states))
                self.values = a.transpose_for_scores(a.value(states))

        def forward(
            self,
            hidden_states: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            head_mask: torch.Tensor | None = None,
            encoder_hidden_states: torch.Tensor | None = None,
            encoder_attention_mask: torch.Tensor | None = None,
            past_key_value: Any = None,
            output_attentions: bool = False,
        ) -> tuple[Any, ...]:
            a = self.attention
            if self.keys is None or self.values is None or encoder_hidden_states is None or output_attentions:
                out: tuple[Any, ...] = a(
                    hidden_states,
                    attention_mask,
                    head_mask,
                    encoder_hidden_states,
                    encoder_attention_mask,
                    past_key_value,
                    output_attentions,
                )
                return out
            # 1. Which question each row belongs to; the beams of one question are `group` consecutive rows.
            rows = encoder_hidden_states[:, 0, 0].long()
            n, length, _ = hidden_states.shape
            group = beam_size if n % beam_size == 0 else 1
            if group > 1 and not bool((rows.view(-1, group) == rows.view(-1, group)[:, :1]).all()):
                group = 1
            questions = rows.view(-1, group)[:, 0]
            heads, size = a.num_attention_heads, a.attention_head_size
            # 2. Queries of a question's beams side by side: (questions, heads, group * length, size).
            query = a.query(hidden_states).view(-1, group, length, heads, size)
            query = query.permute(0, 3, 1, 2, 4).reshape(-1, heads, group * length, size)
            # 3. Attention as BertSelfAttention computes it, against the keys/values made once.
            scores = clamp_inf(torch.matmul(query, self.keys[questions].transpose(-1, -2)))
            scores = scores / math.sqrt(size)
            if encoder_attention_mask is not None:  # (rows, 1, 1, tokens), identical within a group
                scores = (
                    scores + encoder_attention_mask.view(-1, group, *encoder_attention_mask.shape[1:])[:, 0]
                )
            probabilities = torch.nn.Softmax(dim=-1)(scores)
            if head_mask is not None:
                probabilities = probabilities * head_mask
            context = torch.matmul(probabilities, self.values[questions])
            # 4. Back to one row per beam: (rows, length, hidden).
            context = context.view(-1, heads, group, length, size).permute(0, 2, 3, 1, 4)
            return (context.reshape(n, length, heads * size), None)

    wrappers = []
    for layer in model.text_decoder.bert.encoder.layer:
        attention = layer.crossattention.self
        if getattr(attention, "position_embedding_type", "absolute") != "absolute":
            continue  # relative positions: leave modelscope's module as it is (never the case for mPLUG)
        layer.crossattention.self = SharedCrossAttention(attention)
        wrappers.append(layer.crossattention.self)
    return wrappers


# -- small helpers ---------------------------------------------------------------------------------

# Deprecation notices of modelscope's own imports and calls (nothing a user of the judge can act on).
UPSTREAM_WARNINGS = (
    r"Importing from timm\.models\.layers is deprecated",
    r"Calling BertTokenizer\.from_pretrained\(\) with the path to a single file",
)


@contextlib.contextmanager
def quiet_upstream_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in UPSTREAM_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield


def pick_device(name: str) -> str:
    """auto: cpu without a GPU; else cuda:$LOCAL_RANK, so each rank of torchrun / accelerate launch takes its own."""
    import os

    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DpgBenchError(f"judge option device={name}: no CUDA device is visible; use device=cpu")
    return name


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    import torch

    choices = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in choices:
        raise DpgBenchError(f"judge option dtype={name}: choose one of auto, {', '.join(choices)}")
    return choices[name]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
