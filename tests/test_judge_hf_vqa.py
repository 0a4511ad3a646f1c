"""hf-vqa judge on tiny random BLIP VQA and Qwen2-VL models built here from configs (tokenizers trained here).

Answers equal transformers' own one-question generate calls; batched equals one-by-one; P(yes) equals the
softmax of HF generate's first-step logits; biased models answer and score as biased.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from cli_runner import invoke  # noqa: E402
from PIL import Image  # noqa: E402

from dpgbench import registry  # noqa: E402
from dpgbench.errors import DpgBenchError  # noqa: E402
from dpgbench.judges import JUDGES  # noqa: E402
from dpgbench.judges.hf_vqa import HfVqaJudge, HfVqaJudgeConfig  # noqa: E402

WORDS = (
    "yes no is are there a an the of on in to and what color how many red blue green white black cat dog "
    "car tree house man sky left right next under sitting holding answer with or picture"
).split()
QUESTIONS = [
    "Is there a red cat?",
    "Is there a blue dog?",  # same token length as the one above and below: batched together
    "Is there a green car?",
    "What color is the sky?",
    "Is the man holding a blue car on the left of the green tree next to the house?",
    "are there dogs?",
    "Is the zebra visible?",  # out of vocabulary
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(64, 64), (40, 90)]]
    out.append(Image.fromarray(rng.integers(0, 256, (50, 50), dtype=np.uint8), mode="L"))
    return out


# -- tiny BLIP VQA ----------------------------------------------------------------------------------


def build_blip(folder: Path, prefer: str | None = None, seed: int = 0) -> Path:
    """BlipForQuestionAnswering (32-wide, 1 layer) + BlipProcessor with a BERT vocab written here."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True)
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    vocab.append("[DEC]")  # BLIP's decoder start token (bos), as in Salesforce/blip-vqa-base
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = BlipConfig(
        vision_config={**small, "image_size": 32, "patch_size": 8},
        text_config={
            **small,
            "vocab_size": len(vocab),
            "max_position_embeddings": 64,
            "bos_token_id": vocab.index("[DEC]"),
            "sep_token_id": 102,
            "pad_token_id": 0,
            "initializer_range": 0.2,  # large enough that answers depend on image and question
        },
    )
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(config).eval()
    if prefer:
        with torch.no_grad():
            model.text_decoder.cls.predictions.bias[vocab.index(prefer)] += 30.0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# -- tiny Qwen2-VL ---------------------------------------------------------------------------------


def build_qwen2_vl(folder: Path, seed: int = 0) -> Path:
    """Qwen2VLForConditionalGeneration (32-wide, 1 layer) + Qwen2VLProcessor with a byte-level BPE trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Qwen2TokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    folder.mkdir(parents=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    sentences = [
        " ".join(WORDS),
        "Yes yes No no. Answer with yes or no.",
        "user assistant system",
    ] + QUESTIONS
    bpe.train_from_iterator(
        sentences,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    bpe.save(str(folder / "tokenizer.json"))
    tokenizer = Qwen2TokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},  # sums to head_dim / 2
            "initializer_range": 0.2,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "patch_size": 14},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_vqa")
    return {
        "blip": build_blip(root / "blip"),
        "blip_yes": build_blip(root / "blip_yes", prefer="yes"),
        "blip_no": build_blip(root / "blip_no", prefer="no"),
        "qwen2_vl": build_qwen2_vl(root / "qwen2_vl"),
    }


def judge(folder: Path, **options) -> HfVqaJudge:
    return HfVqaJudge(HfVqaJudgeConfig(model=str(folder), offline=True, **options))


# -- BLIP ------------------------------------------------------------------------------------------


def hf_blip_generate(folder: Path, image: Image.Image, question: str, max_new_tokens: int = 10):
    """transformers' own path for one question: BlipProcessor + BlipForQuestionAnswering.generate."""
    from transformers import BlipForQuestionAnswering, BlipProcessor

    processor = BlipProcessor.from_pretrained(folder)
    model = BlipForQuestionAnswering.from_pretrained(folder).eval()
    inputs = processor(images=image.convert("RGB"), text=question, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            output_logits=True,
            return_dict_in_generate=True,
        )
    answer = processor.decode(out.sequences[0], skip_special_tokens=True).strip()
    p_yes = out.logits[0].float().softmax(-1)[0, processor.tokenizer.convert_tokens_to_ids("yes")].item()
    return answer, p_yes


def test_blip_answers_and_scores_equal_transformers_generate(folders):
    ours = judge(folders["blip"], batch_size=2)  # the three equal-length questions: batches of 2 and 1
    seen = set()
    for image in images():
        scored = ours.ask_with_scores(image, QUESTIONS)
        for (answer, p_yes), question in zip(scored, QUESTIONS):
            ref_answer, ref_p = hf_blip_generate(folders["blip"], image, question)
            assert answer == ref_answer
            assert p_yes == pytest.approx(ref_p, rel=1e-4, abs=1e-7)
            seen.add(answer)
        assert ours.ask(image, QUESTIONS) == [a for a, _ in scored]
    assert len(seen) >= 3  # the random model's answers change with the input: the comparison has teeth


def test_blip_biased_models(folders):
    pics = images()
    yes = judge(folders["blip_yes"], max_new_tokens=1)
    no = judge(folders["blip_no"], max_new_tokens=1)
    for image in pics:
        assert [a for a, _ in yes.ask_with_scores(image, QUESTIONS)] == ["yes"] * len(QUESTIONS)
        assert min(p for _, p in yes.ask_with_scores(image, QUESTIONS)) > 0.999
        assert no.ask(image, QUESTIONS) == ["no"] * len(QUESTIONS)
        assert max(p for _, p in no.ask_with_scores(image, QUESTIONS)) < 1e-6


def test_blip_batched_equals_one_by_one(folders):
    ours = judge(folders["blip"], batch_size=4)
    pics = images()
    lists = [QUESTIONS, QUESTIONS[:2], QUESTIONS[::-1]]
    one_by_one = [[ours.ask(image, [q])[0] for q in qs] for image, qs in zip(pics, lists)]
    assert ours.ask_batch(pics, lists) == one_by_one


# -- image-text-to-text VLM (Qwen2-VL) ---------------------------------------------------------------


def hf_vlm_generate(folder: Path, image: Image.Image, question: str, prompt: str):
    """transformers' own path for one question: processor chat template + generate, greedy."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": prompt.format(question=question)}],
        }
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image.convert("RGB")], text=[text], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=10,
            do_sample=False,
            num_beams=1,
            output_logits=True,
            return_dict_in_generate=True,
        )
    answer = processor.batch_decode(
        out.sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )[0]
    return answer.strip(), out.logits[0].float().softmax(-1)[0]


def test_vlm_answers_and_scores_equal_transformers_generate(folders):
    ours = judge(folders["qwen2_vl"], batch_size=4)  # 7 questions: left-padded batches of 4 and 3
    assert ours.kind == "vlm"
    prompt = ours.config.prompt
    answers = set()
    for image in images()[:2]:
        scored = ours.ask_with_scores(image, QUESTIONS)
        for (answer, p_yes), question in zip(scored, QUESTIONS):
            ref_answer, first_step = hf_vlm_generate(folders["qwen2_vl"], image, question, prompt)
            assert answer == ref_answer
            assert p_yes == pytest.approx(first_step[ours.yes_ids].sum().item(), rel=1e-4, abs=1e-7)
            answers.add(answer)
    assert len(answers) >= 2


def test_vlm_batched_equals_one_by_one_and_yes_tokens(folders):
    ours = judge(folders["qwen2_vl"], batch_size=3)
    image = images()[0]
    assert ours.ask(image, QUESTIONS) == [ours.ask(image, [q])[0] for q in QUESTIONS]
    tokenizer = ours.tokenizer
    # every counted id decodes to a spelling of "yes"
    assert ours.yes_ids and {tokenizer.decode([i]).strip().lower() for i in ours.yes_ids} == {"yes"}


# -- registry, info, errors -------------------------------------------------------------------------


def test_registry_info_and_errors(folders, tmp_path):
    built = registry.create(
        JUDGES, "hf-vqa", "judge", {"model": str(folders["blip_no"]), "max_new_tokens": "1"}
    )
    assert built.ask(images()[0], ["is it red?"]) == ["no"]
    info = built.info()
    assert (info["name"], info["kind"], info["model_type"], info["dtype"]) == (
        "hf-vqa",
        "blip",
        "blip",
        "float32",
    )
    assert info["decoding"] == {"greedy": True, "max_new_tokens": 1}
    json.dumps(info)
    assert math.isnan(built.yes_probability(None, 1)[0])
    with pytest.raises(DpgBenchError, match="cannot load it .offline=true"):
        judge(tmp_path / "nothing-here")


# -- through the CLI -------------------------------------------------------------------------------


def test_score_cli_with_soft_scores(folders, tmp_path, capsys):
    """`dpgbench score --judge hf-vqa --soft-scores` on a run: P(yes) logged per answer equals the judge's,
    and summary.json's soft score is their mean (a VQAScore-style score) next to the yes/no protocols."""

    def cli(*args) -> tuple[int, str, str]:
        return invoke(args, capsys)

    run = tmp_path / "run"
    assert cli("generate", "--backend", "dummy", "--prompts", "demo", "--limit", "2", "--out", run)[0] == 0
    options = ["--judge-arg", f"model={folders['qwen2_vl']}", "--judge-arg", "offline=true"]
    code, out, err = cli("score", run, "--judge", "hf-vqa", *options, "--soft-scores")
    assert code == 0, err
    assert "soft score (mean P(yes), no dependencies)" in out
    with open(run / "eval" / "hf-vqa" / "answers.jsonl") as f:
        logged = [json.loads(line) for line in f]
    assert len(logged) == 4 * (12 + 14)  # the first two demo prompts' distinct questions, 4 images each
    ours = judge(folders["qwen2_vl"])
    record = logged[0]
    from dpgbench.evaluate import load_image

    image = load_image(run / "images" / f"{record['item_id']}_{record['index']}.png")
    same_image = [r for r in logged if (r["item_id"], r["index"]) == (record["item_id"], record["index"])]
    expected = ours.ask_with_scores(image, [r["question"] for r in same_image])
    assert [(r["answer"], r["p_yes"]) for r in same_image] == [
        (a, pytest.approx(p, abs=1e-6)) for a, p in expected
    ]
    soft = json.loads((run / "eval" / "hf-vqa" / "summary.json").read_text())["soft_score"]
    assert soft["n"] == 2 and soft["images_left_out"] == 0
    per_prompt = {}
    for r in logged:
        per_prompt.setdefault(r["item_id"], {}).setdefault(r["index"], []).append(r["p_yes"])
    means = [
        sum(sum(v) / len(v) for v in images.values()) / len(images) * 100 for images in per_prompt.values()
    ]
    assert soft["overall"] == pytest.approx(sum(means) / len(means))
