"""mplug-large judge: answers equal modelscope's own code path (and its real pipeline when importable),
batched answers equal one-by-one answers, folders resolve offline, bad folders fail with one clear line.

All on tiny random-weight mPLUG folders built by tests/tiny_mplug.py (fixture `tiny_mplug_dirs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("modelscope")
pytest.importorskip("timm")

from cli_runner import invoke  # noqa: E402
from PIL import Image  # noqa: E402

from dpgbench import registry  # noqa: E402
from dpgbench.errors import DpgBenchError  # noqa: E402
from dpgbench.judges import JUDGES  # noqa: E402
from dpgbench.judges.mplug import DEFAULT_MODEL, MplugJudge, MplugJudgeConfig  # noqa: E402

QUESTIONS = [
    "Is there a red cat?",
    "What color is the sky?",
    "How many dogs are sitting on the chair?",
    "Is the MAN holding a blue car?",
    "is the tree next to the house, under the sky?",
    # longer than 25 tokens: the pipeline truncates, so must we
    "is there a small white dog sitting next to a big black cat under a green tree on the left of a "
    "yellow house with two red cars and three blue chairs?",
    "Are the zebras visible?",  # out-of-vocabulary word -> [UNK]
]


def images() -> list[Image.Image]:
    """Varied inputs: noise of several sizes, a gradient, RGBA and grayscale (the pipeline converts to RGB)."""
    rng = np.random.default_rng(7)
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(80, 80), (50, 120)]]
    ramp = np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (96, 1))
    out.append(Image.fromarray(np.stack([ramp, ramp.T, 255 - ramp], axis=-1)))
    out.append(Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), mode="RGBA"))
    out.append(Image.fromarray(rng.integers(0, 256, (70, 70), dtype=np.uint8), mode="L"))
    return out


@pytest.fixture(scope="module")
def judges(tiny_mplug_dirs: dict[str, Path]) -> dict[str, MplugJudge]:
    return {name: MplugJudge(MplugJudgeConfig(model=str(folder))) for name, folder in tiny_mplug_dirs.items()}


def modelscope_model_answers(folder: Path, image: Image.Image, questions: list[str]) -> list[str]:
    """What `pipeline(Tasks.visual_question_answering, model=folder)` does per question, without importing
    the pipeline module (it needs fairseq, decord, librosa...): the model built by modelscope's
    Model.from_pretrained, the MPlugPreprocessor steps (modelscope 1.40.2, preprocessors/multi_modal.py),
    the pipeline's collate_fn and no_grad forward, and the model's own decoding."""
    from torchvision import transforms
    from transformers import BertTokenizer

    try:  # modelscope's own loading and pipeline modules need modelscope[framework] (datasets, simplejson)
        from modelscope.models import Model
        from modelscope.pipelines.base import collate_fn

        with contextlib.redirect_stdout(io.StringIO()):  # modelscope prints its load report
            model = Model.from_pretrained(str(folder))
    except ModuleNotFoundError as exc:
        pytest.skip(f"modelscope's model path needs {exc.name}: pip install 'modelscope[framework]==1.40.2'")
    model.eval()
    res = model.model.config.image_res
    transform = transforms.Compose(
        [
            transforms.Resize((res, res), interpolation=Image.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(
                mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711)
            ),
        ]
    )
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    answers = []
    for question in questions:
        pixels = torch.stack([transform(image.convert("RGB"))], dim=0)
        tokens = tokenizer(
            question.lower(), padding="max_length", truncation=True, max_length=25, return_tensors="pt"
        )
        with torch.no_grad():
            out = model(collate_fn({"image": pixels, "question": tokens}, torch.device("cpu")))
        answers.append(out["text"])
    return answers


# Set by .ci/pipeline_parity, which builds the side environment the real pipeline needs: there a missing
# pipeline is a failure, not a skip, so the parity proof cannot pass silently by not running.
REQUIRE_PIPELINE = "DPGBENCH_REQUIRE_MPLUG_PIPELINE"


def real_pipeline():
    try:
        from modelscope.pipelines import pipeline
        from modelscope.pipelines.multi_modal.visual_question_answering_pipeline import (  # noqa: F401
            VisualQuestionAnsweringPipeline,
        )
        from modelscope.utils.constant import Tasks
    except Exception as exc:  # ModuleNotFoundError for fairseq, or modelscope's RuntimeError wrapping it
        reason = (
            f"modelscope's VQA pipeline is not importable here ({exc}); see .ci/pipeline_parity for its deps"
        )
        if os.environ.get(REQUIRE_PIPELINE) == "1":
            pytest.fail(f"{REQUIRE_PIPELINE}=1 but {reason}")
        pytest.skip(reason)
    return pipeline, Tasks


@pytest.mark.parametrize("name", ["free", "yesno"])
def test_answers_equal_modelscope_model_path(tiny_mplug_dirs, judges, name):
    folder, judge = tiny_mplug_dirs[name], judges[name]
    for image in images():
        expected = modelscope_model_answers(folder, image, QUESTIONS)
        assert judge.ask(image, QUESTIONS) == expected


@pytest.fixture()
def pil_state():
    """modelscope's OFA preprocessors (imported with the VQA pipeline) set Pillow's global
    LOAD_TRUNCATED_IMAGES = True; restore it so later tests still see truncated files fail."""
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    yield
    ImageFile.LOAD_TRUNCATED_IMAGES = before


@pytest.mark.parametrize("name", ["free", "yesno"])
def test_answers_equal_real_modelscope_pipeline(tiny_mplug_dirs, judges, name, pil_state):
    pipeline, tasks = real_pipeline()
    with contextlib.redirect_stdout(io.StringIO()):
        vqa = pipeline(tasks.visual_question_answering, model=str(tiny_mplug_dirs[name]), device="cpu")
    for image in images():
        expected = [vqa({"image": image, "question": q})["text"] for q in QUESTIONS]
        assert judges[name].ask(image, QUESTIONS) == expected


def test_free_model_answers_are_varied(judges):
    """Guards the parity tests' power: the unbiased folder gives multi-word answers that change with the input."""
    answers = [a for image in images() for a in judges["free"].ask(image, QUESTIONS)]
    # Golden values of the seed-0 folder (torch 2.14.1): 24 distinct answers out of 35, nearly all running
    # to max_length (10 words), so every parity test walks the whole beam search.
    assert len(set(answers)) == 24
    assert sorted(len(a.split()) for a in answers)[:3] == [6, 7, 10]


def test_batched_equals_one_by_one(tiny_mplug_dirs):
    # Small batches so chunks cut across images and the vision tower sees several images at once.
    judge = MplugJudge(MplugJudgeConfig(model=str(tiny_mplug_dirs["free"]), image_batch=2, question_batch=3))
    pics = images()
    lists = [QUESTIONS, QUESTIONS[:1], [], QUESTIONS[::-1], QUESTIONS[2:5]]
    batched = judge.ask_batch(pics, lists)
    one_by_one = [[judge.ask(image, [q])[0] for q in questions] for image, questions in zip(pics, lists)]
    assert batched == one_by_one
    assert [len(a) for a in batched] == [7, 1, 0, 7, 3]
    assert judge.ask_batch([], []) == []


def test_biased_folders(judges):
    pics = images()
    assert {a for image in pics for a in judges["yes"].ask(image, QUESTIONS)} == {"yes"}
    assert {a for image in pics for a in judges["no"].ask(image, QUESTIONS)} == {"no"}
    mixed = [a for image in pics for a in judges["yesno"].ask(image, QUESTIONS)]
    # decided by image and question, one word each; golden counts of the seed-0 folder
    assert (mixed.count("yes"), mixed.count("no")) == (31, 4)


def test_fp16_runs_and_keeps_biased_answers(tiny_mplug_dirs):
    judge = MplugJudge(MplugJudgeConfig(model=str(tiny_mplug_dirs["yes"]), dtype="fp16"))
    assert judge.ask(images()[0], QUESTIONS[:3]) == ["yes", "yes", "yes"]
    assert judge.info()["dtype"] == "float16"


def test_info(tiny_mplug_dirs, judges):
    info = judges["yes"].info()
    weights = tiny_mplug_dirs["yes"] / "pytorch_model.bin"
    assert info["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (info["name"], info["dtype"], info["device"]) == ("mplug-large", "float32", "cpu")
    assert (info["image_res"], info["beam_size"], info["answer_max_length"], info["question_tokens"]) == (
        64,
        5,
        10,
        25,
    )
    assert info["missing_weights"] == 0
    json.dumps(info)  # goes into the manifest


def test_registry_builds_the_judge(tiny_mplug_dirs):
    judge = registry.create(
        JUDGES, "mplug-large", "judge", {"model": str(tiny_mplug_dirs["no"]), "question_batch": "4"}
    )
    assert judge.config.question_batch == 4
    assert judge.ask(images()[1], ["is it?"]) == ["no"]


def test_model_id_resolves_from_cache_offline_under_either_org(tiny_mplug_dirs, tmp_path):
    # modelscope_hub's cache layout: <cache>/models/<owner>--<name>/snapshots/<revision>/
    name = DEFAULT_MODEL.split("/")[1]
    snapshot = tmp_path / "models" / f"iic--{name}" / "snapshots" / "master"
    shutil.copytree(tiny_mplug_dirs["yes"], snapshot)
    judge = MplugJudge(MplugJudgeConfig(model=DEFAULT_MODEL, cache_dir=str(tmp_path), offline=True))
    assert judge.folder == snapshot
    assert judge.ask(images()[0], ["is there a cat?"]) == ["yes"]


NETWORK: list[tuple[str, object]] | None = None  # socket calls seen while a test sets it to a list
AUDITING: list[bool] = []


def _audit(event: str, args: tuple) -> None:
    if NETWORK is not None and event in ("socket.connect", "socket.getaddrinfo"):
        NETWORK.append((event, args[1] if len(args) > 1 else None))


@pytest.mark.parametrize("layout", ["models/damo/{name}", "damo/{name}", "hub/damo/{name}"])
def test_cached_model_never_touches_the_network(tiny_mplug_dirs, tmp_path, layout):
    """A cache made by modelscope < 1.38 (its older layouts, under the old org name), asked for by the
    new org name without offline=true: found on disk, and not one socket is opened (no version check)."""
    global NETWORK
    name = DEFAULT_MODEL.split("/")[1]
    shutil.copytree(tiny_mplug_dirs["yes"], tmp_path / layout.format(name=name))
    if not AUDITING:
        sys.addaudithook(_audit)  # hooks cannot be removed; this one records only while NETWORK is a list
        AUDITING.append(True)
    NETWORK = []
    try:
        judge = MplugJudge(MplugJudgeConfig(model=f"iic/{name}", cache_dir=str(tmp_path)))
        assert judge.ask(images()[0], ["is there a cat?"]) == ["yes"]
        assert NETWORK == []
    finally:
        NETWORK = None
    assert judge.folder == tmp_path / layout.format(name=name)


def test_missing_model_offline_is_one_clear_error(tmp_path):
    with pytest.raises(
        DpgBenchError, match=r"not in the modelscope cache and offline=true: run `modelscope download"
    ):
        MplugJudge(MplugJudgeConfig(model="iic/no_such_mplug", cache_dir=str(tmp_path), offline=True))
    with pytest.raises(DpgBenchError, match="no such folder"):
        MplugJudge(MplugJudgeConfig(model=str(tmp_path / "absent" / "dir")))


def test_bad_folders_fail_with_file_and_fix(tiny_mplug_dirs, tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(tiny_mplug_dirs["yes"], tmp_path / name))

    no_weights = copy("no_weights")
    (no_weights / "pytorch_model.bin").unlink()
    with pytest.raises(DpgBenchError, match=r"no_weights/pytorch_model.bin: missing"):
        MplugJudge(MplugJudgeConfig(model=str(no_weights)))

    captioner = copy("captioner")
    config = json.loads((captioner / "configuration.json").read_text())
    config["task"] = "image-captioning"
    (captioner / "configuration.json").write_text(json.dumps(config))
    with pytest.raises(DpgBenchError, match="task is 'image-captioning', not 'visual-question-answering'"):
        MplugJudge(MplugJudgeConfig(model=str(captioner)))

    partial = copy("partial")
    state = torch.load(partial / "pytorch_model.bin", weights_only=True)
    del state["model.visn_fc.weight"]
    torch.save(state, partial / "pytorch_model.bin")
    with pytest.raises(
        DpgBenchError, match=r"1 weights of the answer path are missing \(first: visn_fc.weight\)"
    ):
        MplugJudge(MplugJudgeConfig(model=str(partial)))
    lenient = MplugJudge(MplugJudgeConfig(model=str(partial), strict_weights=False))
    assert lenient.info()["missing_weights"] == 1


@pytest.mark.parametrize("rows", [[0] * 5 + [2] * 5, [2, 0, 1, 2]])  # beams grouped per question, or not
def test_shared_cross_attention_equals_modelscope_attention(judges, rows):
    """The decoder cross-attention wrapper == modelscope's BertSelfAttention on the tiled states."""

    judge: MplugJudge = judges["free"]
    wrapper = judge.shared_cross_attention[0]
    layer = judge.model.text_decoder.bert.encoder.layer[0]
    assert layer.crossattention.self is wrapper
    generator = torch.Generator().manual_seed(0)
    hidden = 32  # tiny folder's text width
    states = torch.randn(3, 9, hidden, generator=generator)
    queries = torch.randn(len(rows), 2, hidden, generator=generator)
    index = torch.tensor(rows)
    mask = torch.zeros(3, 1, 1, 9)
    mask[1, ..., 6:] = -10000.0  # a padded question: its last states are masked
    carrier = index.float()[:, None, None].expand(-1, 9, 1).contiguous()
    with torch.no_grad():
        expected = wrapper.attention(queries, None, None, states[index], mask[index])[0]
        wrapper.fill(states)
        try:
            got = wrapper(queries, None, None, carrier, mask[index])[0]
        finally:
            wrapper.fill(None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_auto_dtype_is_fp16_on_gpu_fp32_on_cpu():
    from dpgbench.judges.mplug import pick_dtype

    assert pick_dtype("auto", torch.device("cuda", 0)) == torch.float16  # no GPU needed to decide
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(DpgBenchError, match="dtype=half: choose one of auto, fp32, fp16, bf16"):
        pick_dtype("half", torch.device("cpu"))


def test_auto_device_follows_the_launchers_local_rank(monkeypatch):
    from dpgbench.judges.mplug import pick_device

    monkeypatch.setenv("LOCAL_RANK", "1")
    if not torch.cuda.is_available():
        assert pick_device("auto") == "cpu"
        with pytest.raises(DpgBenchError, match="device=cuda:1: no CUDA device is visible; use device=cpu"):
            pick_device("cuda:1")
    else:  # rank 1 of torchrun / accelerate launch: the second GPU (wrapping round when there is one)
        assert pick_device("auto") == f"cuda:{1 % torch.cuda.device_count()}"


cli = invoke


def test_score_cli_on_official_grids_batched_and_with_bad_files(tiny_mplug_dirs, tmp_path, capsys):
    """Official-layout grids through import-folder, scored by mplug-large: 4 images per call answer as 1 per
    call, and each bad grid is reported with its reason and scored 0 in strict."""
    run, grids, imported = tmp_path / "run", tmp_path / "grids", tmp_path / "imported"
    assert (
        cli(["generate", "--backend", "dummy", "--prompts", "demo", "--limit", "5", "--out", run], capsys)[0]
        == 0
    )
    assert cli(["export-grids", run, "--out", grids], capsys)[0] == 0
    names = sorted(p.name for p in grids.iterdir())
    truncated, resized, deleted = names[:3]
    (grids / truncated).write_bytes((grids / truncated).read_bytes()[:300])
    Image.open(grids / resized).resize((100, 100)).save(grids / resized)
    (grids / deleted).unlink()
    (grids / "notes.txt").write_text("not an image")
    code, out, err = cli(
        ["import-folder", grids, "--out", imported, "--prompts", "demo", "--grid-tile", "64"], capsys
    )
    assert code == 0, err
    assert f"{truncated}: corrupt image: image file is truncated" in err
    assert f"{resized}: grid is 100x100, expected 128x128 for tile 64" in err
    # the demo has 12 prompts: 3 with bad grids and 7 never generated (--limit 5) have no images
    assert "notes.txt: extra file: not an image" in err and "40 image(s) missing" in out

    judge = ["--judge", "mplug-large", "--judge-arg", f"model={tiny_mplug_dirs['free']}"]
    code, out, err = cli(["score", imported, *judge, "--images-per-call", "4"], capsys)
    assert code == 0, err
    assert "strict: 40 missing image(s) scored 0" in out
    listed = [line for line in err.splitlines() if line.startswith("image problem ")]
    assert len(listed) == 10 and "40 image problems in all" in err
    summary = json.loads((imported / "eval" / "mplug-large" / "summary.json").read_text())
    assert len(summary["problems"]) == 40 and len(summary["protocols"]["strict"]["missing_images"]) == 40
    reasons = {p["item_id"]: p["reason"] for p in summary["problems"]}
    for bad in (truncated, resized, deleted):  # the import's reason, carried into the score's report
        assert reasons[bad[:-4]].startswith("generation failed: "), reasons
    code, out, err = cli(["score", imported, *judge, "--images-per-call", "1", "--label", "one"], capsys)
    assert code == 0, err

    def answers(folder: str) -> dict:
        with open(imported / "eval" / folder / "answers.jsonl") as f:
            return {(r["image"], r["question"]): r["answer"] for r in map(json.loads, f)}

    batched, single = answers("mplug-large"), answers("one")
    assert batched == single and len(batched) == 88  # 4 good images each of 2 prompts (11 questions each)
    assert (imported / "eval" / "mplug-large" / "scores.csv").read_bytes() == (
        imported / "eval" / "one" / "scores.csv"
    ).read_bytes()


def test_torchrun_ranks_share_the_judging(tiny_mplug_dirs, tmp_path, capsys):
    """`torchrun --nproc-per-node 2 -m dpgbench.cli score ...`: each rank judges every other prompt into its
    own log, and the tables equal a single process's."""
    import subprocess

    run = tmp_path / "run"
    assert (
        cli(["generate", "--backend", "dummy", "--prompts", "demo", "--limit", "4", "--out", run], capsys)[0]
        == 0
    )
    judge = ["--judge", "mplug-large", "--judge-arg", f"model={tiny_mplug_dirs['yesno']}"]
    assert cli(["score", run, *judge, "--label", "single"], capsys)[0] == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "dpgbench.cli", "score", str(run), *judge]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = run / "eval" / "mplug-large"
    logs = [[json.loads(line) for line in (folder / f"answers.rank{k}.jsonl").open()] for k in (0, 1)]
    assert [len({r["item_id"] for r in log}) for log in logs] == [2, 2]  # every other prompt
    with open(run / "eval" / "single" / "answers.jsonl") as f:
        single = {(r["image"], r["question"]): r["answer"] for r in map(json.loads, f)}
    assert {(r["image"], r["question"]): r["answer"] for log in logs for r in log} == single
    # whichever rank finished last found every answer in and wrote the tables
    assert done.stdout.count("DPG-Bench score") >= 1
    assert (folder / "scores.csv").read_bytes() == (run / "eval" / "single" / "scores.csv").read_bytes()
