"""ELLA training on tiny real models: the loss goes down, resume is exact, data sources and errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from cli_runner import invoke  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from ella import ELLA  # noqa: E402
from ella.text_encoder import T5TextEmbedder  # noqa: E402
from ella.train import TrainConfig, denoising_loss, fresh_tsc, load_frozen, main, parser, train  # noqa: E402
from ella.train_data import PairDataset, StepBatches, TrainDataError, collate, read_pairs  # noqa: E402

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 210, 40)}
TINY_TSC = dict(width=32, layers=2, heads=4, num_latents=8, time_channel=16, time_embed_dim=24)


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    """8 synthetic pairs: a coloured square on the left or right, captioned accordingly."""
    folder = tmp_path_factory.mktemp("pairs")
    for i, (name, rgb) in enumerate(COLOURS.items()):
        for side in ("left", "right"):
            image = Image.new("RGB", (80, 64), (240, 240, 240))
            x = 8 if side == "left" else 44
            ImageDraw.Draw(image).rectangle([x, 16, x + 28, 44], fill=rgb)
            stem = f"{i}_{side}"
            image.save(folder / f"{stem}.png")
            (folder / f"{stem}.txt").write_text(f"a {name} box on the {side}\n")
    return folder


def config_for(base, t5, data, out, **changes):
    options = dict(
        base=str(base),
        data=str(data),
        output_dir=str(out),
        text_encoder=str(t5),
        resolution=32,
        batch_size=4,
        max_length=16,
        learning_rate=1e-3,
        checkpoint_every=3,
        max_steps=6,
        **TINY_TSC,
    )
    return TrainConfig(**(options | changes))


def weights(folder):
    return ELLA.from_pretrained(folder).state_dict()


def eval_loss(tsc, config):
    """Mean loss over all pairs with fixed noise and timesteps: comparable across weights."""
    frozen = load_frozen(config.base, torch.float32, torch.device("cpu"), False)
    embedder = T5TextEmbedder.from_pretrained(config.text_encoder, max_length=config.max_length, device="cpu")
    batch = collate([PairDataset(read_pairs(config.data), config.resolution)[i] for i in range(8)])
    text = embedder.encode(batch["caption"])
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return (
            sum(float(denoising_loss(tsc.eval(), frozen, batch["pixels"], text, generator)) for _ in range(8))
            / 8
        )


def test_loss_goes_down(tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path):
    config = config_for(
        tiny_sd15_dir,
        tiny_t5_dir,
        pairs_dir,
        tmp_path / "run",
        max_steps=20,
        checkpoint_every=100,
        learning_rate=2e-2,
    )
    before = eval_loss(
        fresh_tsc(config, 32, load_frozen(config.base, torch.float32, "cpu", False).unet.config), config
    )
    seen = []
    final = train(config, on_step=lambda step, loss: seen.append((step, loss)))
    after = eval_loss(ELLA.from_pretrained(final), config)
    assert [s for s, _ in seen] == list(range(1, 21))
    # Same noise, timesteps and images before and after: the tiny frozen UNet leaves little room
    # (measured 1.083 -> 1.048), but the drop is deterministic.
    assert after < before - 0.02, (before, after)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 21)) and log[0]["lr"] == 2e-2
    assert [r["loss"] for r in log] == [loss for _, loss in seen]
    first, last = sum(r["loss"] for r in log[:10]) / 10, sum(r["loss"] for r in log[-10:]) / 10
    assert last < first - 0.05, (first, last)  # measured 1.133 -> 1.027
    assert (tmp_path / "run" / "checkpoints" / "step-0000020" / "trainer_state.json").exists()


def test_only_the_tsc_learns(tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path, monkeypatch):
    """The paper's recipe: UNet, VAE and T5 frozen (no gradients, bit-identical after training), AdamW with
    lr 1e-4 and weight decay 0.01 over exactly the TSC's parameters."""
    import ella.train

    loaded: dict = {}
    real_frozen, real_embedder = ella.train.load_frozen, ella.train.T5TextEmbedder.from_pretrained

    def keep_frozen(*args, **kwargs):
        loaded["frozen"] = real_frozen(*args, **kwargs)
        return loaded["frozen"]

    def keep_embedder(*args, **kwargs):
        loaded["t5"] = real_embedder(*args, **kwargs)
        return loaded["t5"]

    monkeypatch.setattr(ella.train, "load_frozen", keep_frozen)
    monkeypatch.setattr(ella.train.T5TextEmbedder, "from_pretrained", keep_embedder)
    config = config_for(tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path / "run", max_steps=2)
    config.learning_rate = TrainConfig.learning_rate  # the paper's defaults, not the tests' faster rate
    assert (config.learning_rate, config.weight_decay) == (1e-4, 0.01)
    final = train(config)
    frozen, t5 = loaded["frozen"], loaded["t5"]
    pristine = load_frozen(config.base, torch.float32, torch.device("cpu"), False)
    pristine_t5 = real_embedder(config.text_encoder, max_length=16, device="cpu")
    for trained, fresh in (
        (frozen.unet, pristine.unet),
        (frozen.vae, pristine.vae),
        (t5.model, pristine_t5.model),
    ):
        assert not any(p.requires_grad for p in trained.parameters())
        assert all(p.grad is None for p in trained.parameters())
        after, before = trained.state_dict(), fresh.state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    start = fresh_tsc(config, 32, pristine.unet.config).state_dict()
    learned = ELLA.from_pretrained(final).state_dict()
    changed = [k for k in start if not torch.equal(start[k], learned[k])]
    # Zero-initialised AdaLN layers move too: every TSC tensor learns (the test trains 2 steps).
    assert len(changed) == len(start) == 37
    optimizer = torch.load(
        tmp_path / "run" / "checkpoints" / "step-0000002" / "optimizer.bin", weights_only=True
    )
    (group,) = optimizer["param_groups"]
    assert len(group["params"]) == len(list(ELLA.from_pretrained(final).parameters())) == 37
    assert (group["lr"], group["weight_decay"], group["decoupled_weight_decay"]) == (1e-4, 0.01, True)


def test_resume_is_exact(tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path):
    straight = config_for(
        tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path / "straight", random_flip=True, caption_dropout=0.25
    )
    train(straight)
    interrupted = config_for(
        tiny_sd15_dir,
        tiny_t5_dir,
        pairs_dir,
        tmp_path / "parts",
        random_flip=True,
        caption_dropout=0.25,
        max_steps=3,
    )
    train(interrupted)
    resumed = config_for(
        tiny_sd15_dir,
        tiny_t5_dir,
        pairs_dir,
        tmp_path / "parts",
        random_flip=True,
        caption_dropout=0.25,
        resume="latest",
    )
    train(resumed)
    first, second = weights(tmp_path / "straight" / "tsc"), weights(tmp_path / "parts" / "tsc")
    assert all(torch.equal(first[k], second[k]) for k in first)
    middle_a = weights(tmp_path / "straight" / "checkpoints" / "step-0000003" / "tsc")
    middle_b = weights(tmp_path / "parts" / "checkpoints" / "step-0000003" / "tsc")
    assert all(torch.equal(middle_a[k], middle_b[k]) for k in middle_a)
    assert not torch.equal(first["connector.latents"], middle_a["connector.latents"])
    logs = [
        [json.loads(x)["loss"] for x in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
        for run in ("straight", "parts")
    ]
    assert logs[0] == logs[1] and len(logs[0]) == 6


def test_precomputed_features_match_on_the_fly(tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path):
    live = config_for(tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path / "live", max_steps=3, max_length=None)
    cached = config_for(
        tiny_sd15_dir,
        tiny_t5_dir,
        pairs_dir,
        tmp_path / "cached",
        max_steps=3,
        max_length=None,
        precompute_features=True,
    )
    train(live)
    train(cached)
    files = sorted((tmp_path / "cached" / "t5_features").glob("*.safetensors"))
    assert len(files) == 9  # 8 captions + the empty one
    a, b = weights(tmp_path / "live" / "tsc"), weights(tmp_path / "cached" / "tsc")
    for key in a:  # T5 batched 32 captions at a time vs 4: equal up to float rounding
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-4)


def test_sdxl_trains_the_pooled_head(tiny_sdxl_dir, tiny_t5_dir, pairs_dir, tmp_path):
    config = config_for(tiny_sdxl_dir, tiny_t5_dir, pairs_dir, tmp_path / "xl", max_steps=2)
    final = train(config)
    tsc = ELLA.from_pretrained(final)
    assert (tsc.config["output_dim"], tsc.config["pooled_dim"]) == (64, 32)
    start = fresh_tsc(
        config, 32, load_frozen(config.base, torch.float32, "cpu", False).unet.config
    ).state_dict()
    assert not torch.equal(start["pooled_proj.1.weight"], tsc.state_dict()["pooled_proj.1.weight"])


def test_mixed_precision_accumulation_and_checkpointing_options(
    tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path
):
    """bf16 autocast (CPU has it), 2 micro-steps per update, UNet activation checkpointing; then fp32 again."""
    options = dict(max_steps=2, batch_size=2, gradient_accumulation_steps=2, gradient_checkpointing=True)
    train(
        config_for(
            tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path / "bf16", mixed_precision="bf16", **options
        )
    )
    log = [json.loads(x) for x in (tmp_path / "bf16" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert ELLA.from_pretrained(tmp_path / "bf16" / "tsc").dtype == torch.float32  # master weights stay fp32
    train(config_for(tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path / "fp32", max_steps=1))
    with pytest.raises(TrainDataError, match="--mixed-precision fp8: use no, fp16 or bf16"):
        train(config_for(tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path / "x", mixed_precision="fp8"))


def test_two_processes_through_accelerate_launch_resume_exactly(
    tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path
):
    """`accelerate launch -m ella.train` with 2 CPU processes (gloo DDP): the main process logs one gathered
    loss per step and saves once; a 2-process run resumed from its step-1 checkpoint ends bit-identical."""
    import subprocess
    import sys

    def launch(out, *extra):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
        command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        command += ["-m", "ella.train", "--base", str(tiny_sd15_dir), "--data", str(pairs_dir)]
        command += ["--output-dir", str(out), "--text-encoder", str(tiny_t5_dir), "--resolution", "32"]
        command += [f"--{k.replace('_', '-')}={v}" for k, v in TINY_TSC.items()]
        command += [
            "--batch-size",
            "2",
            "--max-steps",
            "2",
            "--checkpoint-every",
            "1",
            "--random-flip",
            "true",
        ]
        done = subprocess.run([*command, *extra], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    straight = launch(tmp_path / "straight")
    assert straight.count("step ") == 2 and straight.strip().endswith(str(tmp_path / "straight" / "tsc"))
    log = [json.loads(line) for line in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]  # one line per optimizer step, not one per process
    resumed = launch(
        tmp_path / "resumed", "--resume", str(tmp_path / "straight" / "checkpoints" / "step-0000001")
    )
    assert resumed.count("step ") == 1  # only step 2 is left
    first, second = weights(tmp_path / "straight" / "tsc"), weights(tmp_path / "resumed" / "tsc")
    assert all(torch.equal(first[k], second[k]) for k in first)
    one = weights(tmp_path / "straight" / "checkpoints" / "step-0000001" / "tsc")
    assert not torch.equal(one["connector.latents"], first["connector.latents"])


def test_folder_and_jsonl_give_the_same_pairs(pairs_dir, tmp_path):
    from_folder = read_pairs(pairs_dir)
    assert len(from_folder) == 8 and from_folder[0].caption == "a red box on the left"
    manifest = tmp_path / "pairs.jsonl"
    lines = [json.dumps({"image": str(p.image), "caption": p.caption}) for p in from_folder]
    manifest.write_text("\n".join(lines) + "\n\n")
    assert read_pairs(manifest) == from_folder
    item = PairDataset(from_folder, 64)[1]
    assert item["pixels"].shape == (3, 64, 64) and item["time_ids"] == [64, 80, 0, 8]
    assert float(item["pixels"].min()) >= -1 and float(item["pixels"].max()) <= 1


def test_bad_data_is_one_clear_line(pairs_dir, tmp_path):
    (tmp_path / "lonely.png").write_bytes((pairs_dir / "0_left.png").read_bytes())
    with pytest.raises(TrainDataError, match="lonely.png has no caption: write it to lonely.txt"):
        read_pairs(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "0_left.png", "caption": "x"}\nnot json\n')
    with pytest.raises(TrainDataError, match=r"bad.jsonl:1: image .*0_left.png does not exist"):
        read_pairs(bad)
    bad.write_text(json.dumps({"image": str(pairs_dir / "0_left.png"), "caption": "x"}) + "\nnot json\n")
    with pytest.raises(TrainDataError, match=r"bad.jsonl:2: expected a JSON object"):
        read_pairs(bad)
    with pytest.raises(TrainDataError, match="8 pairs cannot fill one batch of 16 x 1 processes"):
        StepBatches(8, 16, 1, 0, seed=0, start=0, stop=1)


def test_bad_options_are_one_clear_line(tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path):
    def error_of(**changes):
        with pytest.raises((TrainDataError, ValueError)) as caught:
            train(
                dataclasses.replace(
                    config_for(tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path / "bad"), **changes
                )
            )
        assert "\n" not in str(caught.value)
        return str(caught.value)

    assert error_of(max_steps=0) == "--max-steps 0: use a whole number of at least 1"
    assert error_of(checkpoint_every=0) == "--checkpoint-every 0: use a whole number of at least 1"
    assert error_of(batch_size=0) == "--batch-size 0: use a whole number of at least 1"
    assert (
        error_of(resolution=30) == "--resolution 30: use a multiple of 8 (the VAE downsamples 8x), e.g. 512"
    )
    assert error_of(learning_rate=0.0) == "--learning-rate 0.0: use a positive rate (paper: 1e-4)"
    assert error_of(caption_dropout=1.0) == "--caption-dropout 1.0: use a probability in [0, 1)"
    assert error_of(base=str(tmp_path / "nope")).startswith(
        f"--base {tmp_path / 'nope'}: cannot load its unet/, vae/ and scheduler/ ("
    )
    assert error_of(base=str(tiny_t5_dir)).endswith("give a diffusers SD 1.x / SDXL folder or hub id")
    assert error_of(text_encoder=str(tmp_path / "nope")).startswith(
        f"--text-encoder {tmp_path / 'nope'}: cannot read its T5 config ("
    )
    # A TSC to continue from whose proj_in does not fit the text encoder: refused before training.
    ELLA(input_dim=24, **TINY_TSC).save_pretrained(tmp_path / "tsc-24")  # the tiny T5 is 32 wide
    assert error_of(init_tsc=str(tmp_path / "tsc-24")) == (
        f"the text encoder {tiny_t5_dir} makes 32-wide features but the TSC takes 24: use the T5 the TSC was "
        "trained with (google/flan-t5-xl, 2048, for the released ELLA)"
    )
    assert not (tmp_path / "bad" / "tsc").exists()


def test_batches_are_a_function_of_the_step():
    whole = list(StepBatches(10, 2, 2, 1, seed=5, start=0, stop=6))
    tail = list(StepBatches(10, 2, 2, 1, seed=5, start=4, stop=6))
    other_rank = list(StepBatches(10, 2, 2, 0, seed=5, start=0, stop=6))
    assert whole[4:] == tail
    assert len(whole) == 6 and all(len(b) == 2 for b in whole)
    # Within one epoch (2 micro-steps of 4 indices) the two processes never share an index.
    epoch = sorted(sum(whole[:2] + other_rank[:2], []))
    assert len(set(epoch)) == 8


def test_command_line(tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path, capsys):
    args = [
        "--base",
        str(tiny_sd15_dir),
        "--data",
        str(pairs_dir),
        "--output-dir",
        str(tmp_path / "cli"),
        "--text-encoder",
        str(tiny_t5_dir),
        "--max-length",
        "none",
        "--random-flip",
        "true",
    ]
    parsed = parser().parse_args(args)
    assert parsed.max_length is None and parsed.random_flip is True and parsed.learning_rate == 1e-4
    assert main([*args[:2], "--data", str(tmp_path / "missing"), *args[4:]]) == 1
    assert "error: --data" in capsys.readouterr().err
    # Usage errors: one line naming the flag (not argparse's page of usage), exit code 1.
    for bad, message in (
        (["--max-steps", "abc"], "error: argument --max-steps: 'abc' is not a whole number"),
        (["--max-length", "x"], "error: argument --max-length: 'x' is not a whole number or none"),
        (
            ["--random-flip", "maybe"],
            "error: argument --random-flip: 'maybe' is not a boolean; use true or false",
        ),
        (["--max-stps", "1"], "error: unrecognized arguments: --max-stps 1"),
    ):
        with pytest.raises(SystemExit) as stopped:
            main([*args, *bad])
        err = capsys.readouterr().err
        assert stopped.value.code == 1 and err == f"{message} (see python -m ella.train --help)\n", err
    tiny = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_TSC.items()]
    assert main([*args, *tiny, "--resolution", "32", "--batch-size", "8", "--max-steps", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("step 1: loss ") and out.strip().endswith(str(tmp_path / "cli" / "tsc"))


def test_dpgbench_ella_train_command(tiny_sd15_dir, tiny_t5_dir, pairs_dir, tmp_path, capsys):
    """`dpgbench ella train` takes the same flags, trains one step and saves the TSC; bad flags are one line."""

    def run(args):
        code, _, err = invoke(["ella", "train", *args], capsys)
        return code, err

    base = ["--base", str(tiny_sd15_dir), "--data", str(pairs_dir), "--output-dir", str(tmp_path / "cmd")]
    tiny = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_TSC.items()]
    code, err = run(
        [
            *base,
            "--text-encoder",
            str(tiny_t5_dir),
            *tiny,
            "--resolution",
            "32",
            "--batch-size",
            "4",
            "--max-steps",
            "1",
        ]
    )
    assert code == 0, err
    assert (tmp_path / "cmd" / "tsc").is_dir() and "saved" in err
    code, err = run([*base, "--max-stpes", "1"])
    assert code == 1 and "Did you mean --max-steps?" in err and err.count("\n") == 1
    code, err = run(["--base", "x"])
    assert code == 1 and "--data, --output-dir required" in err
