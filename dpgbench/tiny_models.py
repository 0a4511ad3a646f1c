"""Builders of tiny random-weight models: tokenizers trained here, T5, SD 1.5/2.x/XL, PixArt-α/Σ, SD3.

Every builder uses the real classes at a few-KB-to-MB size, seeds its weights, and saves with
`save_pretrained`, so code loads them through the same `from_pretrained` path as real checkpoints. No hub
is needed. Used by the tests and by `dpgbench demo --tiny-diffusers`; it imports torch, so the core never
imports it at module level.
"""

# mypy: disable-error-code="attr-defined"
# (diffusers exposes its classes through lazy modules that mypy cannot see into)
from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import torch

# Sentences the tiny tokenizers are trained on: DPG-Bench-like prompts covering all letters and digits
# so that test prompts rarely hit <unk>.
SENTENCES = [
    "a red cat sitting on a blue chair next to a green table",
    "three wooden boxes stacked on the left of a small white dog",
    "an astronaut riding a horse on mars, photorealistic, 4k",
    "a quiet lake at sunset with two boats and a yellow umbrella",
    "the old man holds a black umbrella while the girl jumps over puddles",
    "a bowl of fruit: apples, oranges, kiwis and a banana, 1990s style",
    "zebra, giraffe and fox walk by the queen's velvet box 0123456789",
    "a large brown bear wearing glasses reads a book in the library",
]

# Words that get whole-word BPE merges in the tiny CLIP tokenizer (the rest splits into characters).
CLIP_WORDS = ["a", "the", "red", "cat", "blue", "green", "dog", "on", "of", "and", "photo", "chair", "table"]


# --------------------------------------------------------------------------------------------------
# Tokenizers


def clip_tokenizer(directory: str | Path) -> Path:
    """Write a byte-level CLIP BPE tokenizer (vocab.json + merges.txt + config) and return its folder.

    Vocab layout follows CLIP's: 256 byte symbols, the same with `</w>`, the merge results, then
    `<|startoftext|>` and `<|endoftext|>`. model_max_length=77, or SD pipelines overflow.
    """
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    # Merge each word left to right; every intermediate token is in the vocab, so any text tokenizes.
    for word in CLIP_WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        current = parts[0]
        for nxt in parts[1:]:
            merge = f"{current} {nxt}"
            current = current + nxt
            if merge not in merges:
                merges.append(merge)
                vocab_list.append(current)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77
    )
    tokenizer.save_pretrained(directory)
    return directory


def t5_tokenizer(directory: str | Path, vocab_size: int = 160) -> Path:
    """Train a tiny unigram sentencepiece model on SENTENCES and save it as a T5 tokenizer (slow + fast).

    Special ids follow T5: pad=0, eos=1, unk=2, no bos. No `<extra_id_*>` tokens (extra_ids=0).
    """
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.set_random_generator_seed(0)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # the corpus is too small to guarantee exactly vocab_size pieces
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,  # one thread: the trained model is the same bytes every time
        minloglevel=2,  # the trainer logs ~60 lines to stderr otherwise
    )
    spiece = directory / "spiece.model"
    spiece.write_bytes(model.getvalue())
    # add_prefix_space=True spelled out: without it transformers 4.57 converts to a fast tokenizer that
    # drops the leading "▁" of the first word, so slow and fast tokenizers disagree.
    tokenizer = T5TokenizerFast(
        vocab_file=str(spiece), extra_ids=0, model_max_length=512, add_prefix_space=True
    )
    tokenizer.save_pretrained(directory)
    # The saved tokenizer.json already prepends "▁"; left in the config, the flag would force a slow
    # re-conversion on every load (which fails once spiece.model is not beside it).
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("add_prefix_space", None)
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory


def _load_clip_tokenizer():
    """Build the tiny CLIP tokenizer in a scratch folder and load it (pipelines save their own copy)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        return CLIPTokenizer.from_pretrained(clip_tokenizer(scratch))


def _load_t5_tokenizer():
    """The slow T5Tokenizer, as PixArt's repos ship it (it keeps the sentencepiece model in memory)."""
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        return T5Tokenizer.from_pretrained(t5_tokenizer(scratch))


# --------------------------------------------------------------------------------------------------
# Text encoders


def tiny_clip_text_encoder(tokenizer, hidden: int = 32, projection: int | None = None):
    """A seeded 2-layer CLIP text encoder whose vocab and special ids match `tokenizer`.

    With `projection`, a CLIPTextModelWithProjection (SDXL's second encoder) instead of CLIPTextModel.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection or hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model_cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return model_cls(config).eval()


def tiny_t5_encoder(d_model: int = 32, vocab_size: int = 160, seed: int = 0):
    """A seeded 2-layer T5 v1.1-style (gated-gelu) encoder; `d_model` is what adapters/captions must match."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def save_tiny_t5(directory: str | Path, d_model: int = 32) -> Path:
    """Tokenizer + encoder in one folder: AutoTokenizer and T5EncoderModel both load it."""
    from transformers import AutoTokenizer

    directory = t5_tokenizer(directory)
    vocab_size = len(AutoTokenizer.from_pretrained(directory))
    tiny_t5_encoder(d_model=d_model, vocab_size=vocab_size).save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------------------------------
# Diffusers parts. The VAE has four blocks like the real ones, so latents are 1/8 of the image size
# (64x64 images -> 8x8 latents), which keeps the UNet/transformer cost tiny.


def tiny_vae(scaling_factor: float = 0.18215, shift_factor: float | None = None):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    ).eval()


def tiny_unet(cross_attention_dim: int = 32, sdxl: bool = False, sd2: bool = False):
    """A 2-level UNet2DConditionModel; `sdxl` adds the text_time conditioning, `sd2` SD 2.x's options."""
    from diffusers import UNet2DConditionModel

    extra: dict = {}
    if sdxl:
        # add_time_ids has 6 numbers (original size, crop, target size), each embedded to 8 channels,
        # concatenated with the pooled text embedding of the second encoder (32).
        extra = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
            use_linear_projection=True,
        )
    if sd2:
        extra = dict(use_linear_projection=True, upcast_attention=True)
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        **extra,
    ).eval()


def _sd_scheduler(kind: str):
    """The scheduler class and betas each real repo ships (scheduler/scheduler_config.json)."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    if kind == "sd15":
        return PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **common)
    if kind == "sd21":  # the 768 model is v-prediction
        return DDIMScheduler(
            clip_sample=False, set_alpha_to_one=False, prediction_type="v_prediction", **common
        )
    return EulerDiscreteScheduler(timestep_spacing="leading", **common)  # sdxl


def save_tiny_sd15(directory: str | Path) -> Path:
    """A StableDiffusionPipeline (no safety checker) saved to `directory`."""
    from diffusers import StableDiffusionPipeline

    tokenizer = _load_clip_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_clip_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=tiny_unet(),
        scheduler=_sd_scheduler("sd15"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    return Path(directory)


def save_tiny_sd21(directory: str | Path) -> Path:
    """SD 2.x: linear-projection attention, upcast attention, v-prediction DDIM, gelu CLIP."""
    from diffusers import StableDiffusionPipeline

    tokenizer = _load_clip_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_clip_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=tiny_unet(sd2=True),
        scheduler=_sd_scheduler("sd21"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    return Path(directory)


def save_tiny_sdxl(directory: str | Path) -> Path:
    """SDXL: two CLIP encoders (the second with projection) whose hidden states concatenate to 64."""
    from diffusers import StableDiffusionXLPipeline

    tokenizer = _load_clip_tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(scaling_factor=0.13025),
        text_encoder=tiny_clip_text_encoder(tokenizer),
        text_encoder_2=tiny_clip_text_encoder(tokenizer, projection=32),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=tiny_unet(cross_attention_dim=64, sdxl=True),
        scheduler=_sd_scheduler("sdxl"),
        add_watermarker=False,
    )
    pipe.save_pretrained(directory)
    return Path(directory)


def _tiny_pixart_parts() -> dict:
    """Components shared by PixArt-α and PixArt-Σ: T5 (d_model 32 = caption_channels) + a 2-layer DiT."""
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    tokenizer = _load_t5_tokenizer()
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,  # learned sigma, like the real model
        cross_attention_dim=16,
        caption_channels=32,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    ).eval()
    return dict(
        tokenizer=tokenizer,
        text_encoder=tiny_t5_encoder(d_model=32, vocab_size=len(tokenizer)),
        vae=tiny_vae(),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )


def save_tiny_pixart(directory: str | Path) -> Path:
    """PixArt-α at sample_size 8 (the real 1024/512 models have 128/64).

    At this size the pipeline needs use_resolution_binning=False; clean_caption=False unless
    beautifulsoup4 and ftfy are installed.
    """
    from diffusers import PixArtAlphaPipeline

    PixArtAlphaPipeline(**_tiny_pixart_parts()).save_pretrained(directory)
    return Path(directory)


def save_tiny_pixart_sigma(directory: str | Path) -> Path:
    """PixArt-Σ: the same tiny parts under PixArtSigmaPipeline (300-token prompts by default)."""
    from diffusers import PixArtSigmaPipeline

    PixArtSigmaPipeline(**_tiny_pixart_parts()).save_pretrained(directory)
    return Path(directory)


def save_tiny_sd3(directory: str | Path) -> Path:
    """SD3: an MMDiT over two CLIP encoders with projection (pooled 32 + 32) and a T5 (d_model 32).

    The pipeline concatenates the CLIP hidden states (64 features) and pads/crops them to the T5 width,
    so joint_attention_dim is the T5 d_model. Flow-matching Euler scheduler, VAE with shift_factor.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    clip = _load_clip_tokenizer()
    t5 = _load_t5_tokenizer()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=64,
        out_channels=4,
        pos_embed_max_size=16,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=tiny_clip_text_encoder(clip, projection=32),
        tokenizer=clip,
        text_encoder_2=tiny_clip_text_encoder(clip, projection=32),
        tokenizer_2=clip,
        text_encoder_3=tiny_t5_encoder(d_model=32, vocab_size=len(t5)),
        tokenizer_3=t5,
    )
    pipe.save_pretrained(directory)
    return Path(directory)
