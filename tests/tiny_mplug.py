"""Builder of tiny random-weight mPLUG VQA folders in modelscope's layout, for judge tests and benchmarks.

A folder holds what modelscope's `damo/mplug_visual-question-answering_coco_large_en` holds: configuration.json,
config.yaml, config_bert.json, vocab.txt ([CLS]=101, [SEP]=102, as the answer generator hard-codes) and
pytorch_model.bin, written from modelscope's own MPlug classes. Import only in tests that use torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Words after BERT's 104 reserved ids. Question words are in it so that test questions rarely hit [UNK].
WORDS = (
    "yes no is are there a an the of on in to and what color how many red blue green white black yellow "
    "cat dog car tree house man woman girl boy table chair sky water left right next under above big small "
    "one two three four five sitting standing holding wearing photo picture image shown visible"
).split()

# The real large model's sizes (modelscope's MPlugConfig defaults plus a bert-base text side, 6/6/12 layers,
# ~600 M parameters without the distillation copies; numbers from the mPLUG README).
LARGE = dict(
    image_res=504,
    clip_name="ViT-L-14",
    vision_width=1024,
    clip_vision_width=1024,
    clip_vision_layers=24,
    clip_vision_patch_size=14,
    hidden_size=768,
    num_attention_heads=12,
    intermediate_size=3072,
    text_encoder_layers=6,
    fusion_layers=6,
    text_decode_layers=12,
    vocab_size=30522,
)

# The smallest legal visual tower (width 768 is hard-coded for ViT-B-16) and a 32-wide text side.
TINY = dict(
    image_res=64,
    clip_name="ViT-B-16",
    vision_width=768,
    clip_vision_width=768,
    clip_vision_layers=1,
    clip_vision_patch_size=16,
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=64,
    text_encoder_layers=1,
    fusion_layers=2,
    text_decode_layers=1,
    vocab_size=None,  # = len(vocab.txt)
)


def write_vocab(path: Path, size: int | None) -> list[str]:
    """BERT layout: [PAD]=0, [unusedN], [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, then words."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += WORDS
    if size is not None:
        tokens += [f"word{i}" for i in range(size - len(tokens))]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return tokens


def build_mplug(
    folder: str | Path,
    *,
    size: str = "tiny",
    seed: int = 0,
    prefer: tuple[str, ...] = (),
    stride_layer: int = 1,
    weights_dtype: torch.dtype = torch.float16,
    init_std: float = 0.2,
) -> Path:
    """Write a random-weight mPLUG VQA folder and return it.

    `prefer` biases the answer decoder towards those words and then [SEP]: ("yes",) always answers "yes";
    ("yes", "no") answers one of the two, decided by the image and question. `stride_layer=1` makes the
    fusion encoder take its skip-connection branch (which edits the image states in place) at layer 1.
    """
    from modelscope.models.multi_modal.mplug import MPlugConfig
    from modelscope.models.multi_modal.mplug.modeling_mplug import MPlugForVisualQuestionAnswering

    dims = dict(TINY if size == "tiny" else LARGE)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = write_vocab(folder / "vocab.txt", dims["vocab_size"])

    configuration = {
        "framework": "pytorch",
        "task": "visual-question-answering",
        "model": {"type": "mplug"},
        "pipeline": {"type": "visual-question-answering"},
        "preprocessor": {"type": "mplug-tasks-preprocessor"},
    }
    (folder / "configuration.json").write_text(json.dumps(configuration, indent=2), encoding="utf-8")

    text_layers = max(dims["text_encoder_layers"], dims["fusion_layers"], dims["text_decode_layers"])
    bert = {
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": dims["hidden_size"],
        "initializer_range": init_std,
        "intermediate_size": dims["intermediate_size"],
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": dims["num_attention_heads"],
        "num_hidden_layers": text_layers if size == "tiny" else 12,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": len(tokens),
        "encoder_width": dims["hidden_size"],
        "text_encoder_layers": dims["text_encoder_layers"],
        "fusion_layers": dims["fusion_layers"],
        "text_decode_layers": dims["text_decode_layers"],
        "stride_layer": stride_layer,
    }
    (folder / "config_bert.json").write_text(json.dumps(bert, indent=2), encoding="utf-8")

    yaml_lines = {
        "task": "visual-question-answering",
        "bert_config": "config_bert.json",
        "image_res": dims["image_res"],
        "vision_width": dims["vision_width"],
        "clip_name": dims["clip_name"],
        "clip_embed_dim": 32 if size == "tiny" else 768,
        "clip_image_resolution": dims["image_res"],
        "clip_vision_layers": dims["clip_vision_layers"],
        "clip_vision_width": dims["clip_vision_width"],
        "clip_vision_patch_size": dims["clip_vision_patch_size"],
        "clip_context_length": 8,
        "clip_vocab_size": 16,
        "clip_transformer_width": 32,
        "clip_transformer_heads": 2,
        "clip_transformer_layers": 1,
        "distill": True,
        "beam_size": 5,
        "min_length": 1,
        "max_length": 10,
    }
    text = "".join(f"{key}: {json.dumps(value)}\n" for key, value in yaml_lines.items())
    (folder / "config.yaml").write_text(text, encoding="utf-8")

    config = MPlugConfig.from_yaml_file(folder / "config.yaml")
    config.model_dir = str(folder)
    config.distill = False  # the momentum copies are training-only; the checkpoint need not carry them
    torch.manual_seed(seed)
    model = MPlugForVisualQuestionAnswering(config)
    with torch.no_grad():
        # The CLIP tower is initialised with zeros for its resized position table; give it real values.
        model.visual_encoder.visual.positional_embedding.normal_(0.0, 0.02)
        bias = model.text_decoder.cls.predictions.bias
        for rank, word in enumerate(prefer):
            bias[tokens.index(word)] = 20.0 - 0.001 * rank
        if prefer:
            # [SEP] wins as soon as it is allowed (step 2): the answer is exactly one preferred word.
            bias[102] = 25.0
    state = {f"model.{key}": value.to(weights_dtype) for key, value in model.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    return folder
