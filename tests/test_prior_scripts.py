"""Tests of `scripts/train_prior.py`, `scripts/sample.py` and the pipelines of `hf_vqvae.pipelines`.

One class-conditional training run (`accelerate launch`, tiny VQ-VAE and prior, 64 CIFAR-10 images) is shared by the
tests of this module; the other runs are as short as the check they make.
"""

import dataclasses
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config, make_tiny_prior_config
from PIL import Image
from safetensors.torch import load_file
from test_scripts import SAMPLE, script_env
from transformers import pipeline

import hf_vqvae.pairing
from hf_vqvae import VQVAEImageProcessor, VQVAEModel, VQVAEPriorForCausalLM
from hf_vqvae.pairing import VQVAE_REFERENCE_NAME, codes_fingerprint, load_vqvae_for_prior, model_fingerprint
from hf_vqvae.pipelines import VQVAEGenerationPipeline, VQVAEReconstructionPipeline
from hf_vqvae.training.hub import push_folder


sys.path.insert(0, str(REPO_ROOT / "scripts"))
import sample  # noqa: E402
import train_prior  # noqa: E402


TRAIN_PRIOR = str(REPO_ROOT / "scripts" / "train_prior.py")
NUM_CLASSES = 10  # CIFAR-10's ClassLabel
GRID = (8, 8)  # 32x32 images, downsample factor 4
TINY_PRIOR_OVERRIDES = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models spend their time synchronising threads; one thread is much faster (see test_modeling_vqvae_prior)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_vqvae(path, seed: int = 0, **config_kwargs):
    """A tiny VQ-VAE for 32x32 images (K=16, 8x8 codes) and its image processor, as `save_pretrained` folders."""
    torch.manual_seed(seed)
    model = VQVAEModel(make_tiny_config(image_size=32, **config_kwargs))
    model.save_pretrained(path)
    VQVAEImageProcessor.from_model_config(model.config).save_pretrained(path)
    return path


def prior_args(vqvae_dir, output_dir, steps, extra=()):
    return [
        "--vqvae_model_name_or_path",
        str(vqvae_dir),
        "--train_data_files",
        str(SAMPLE / "train-*.parquet"),
        "--validation_data_files",
        str(SAMPLE / "test-*.parquet"),
        "--max_train_samples",
        "64",
        "--max_eval_samples",
        "24",
        "--train_batch_size",
        "8",
        "--eval_batch_size",
        "16",
        "--max_train_steps",
        str(steps),
        "--lr_warmup_steps",
        "2",
        "--checkpointing_steps",
        "2",
        "--validation_steps",
        "3",
        "--logging_steps",
        "1",
        "--num_validation_samples",
        "2",
        "--output_dir",
        str(output_dir),
        "--seed",
        "0",
        *extra,
    ]


def run_prior(args, launcher: bool = True, check: bool = True):
    """`train_prior.py` through `accelerate launch` (as users run it), or plain `python` where only the error matters."""
    command = [sys.executable, TRAIN_PRIOR]
    if launcher:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "1",
            "--cpu",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--num_cpu_threads_per_process",
            "1",
            TRAIN_PRIOR,
        ]
    result = subprocess.run(
        command + args, env=script_env(), capture_output=True, text=True, timeout=600, cwd=REPO_ROOT
    )
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def load_images(parquet_file, count: int) -> list[Image.Image]:
    from datasets import load_dataset

    dataset = load_dataset("parquet", data_files=str(parquet_file), split="train")
    return [dataset[i]["img"] for i in range(count)]


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory):
    return save_vqvae(tmp_path_factory.mktemp("vqvae") / "vqvae")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vqvae_dir):
    """6 class-conditional steps (checkpoints at 2, 4, 6; validation and samples at 3 and 6) from a config file."""
    root = tmp_path_factory.mktemp("prior")
    # The file's codebook size, grid and classes (16, (2, 3), 3) are replaced by the VQ-VAE's and the data's.
    make_tiny_prior_config().save_pretrained(root / "prior_config")
    output = root / "run"
    result = run_prior(
        prior_args(
            vqvae_dir,
            output,
            6,
            [
                "--prior_config_name_or_path",
                str(root / "prior_config" / "config.json"),
                "--label_column",
                "label",
                "--checkpoints_total_limit",
                "2",
            ],
        )
    )
    return {"root": root, "output": output, "log": result.stdout + result.stderr, "config_dir": root / "prior_config"}


# ---------------------------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_train_prior_saves_a_complete_folder(trained, vqvae_dir):
    output, log = trained["output"], trained["log"]
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "modeling_vqvae_prior.py",
        "configuration_vqvae_prior.py",
        VQVAE_REFERENCE_NAME,
        "README.md",
        "eval_results.json",
        "validation_log.jsonl",
        "samples/step-3.png",
        "samples/step-6.png",
        "codes/train.pt",
        "codes/test.pt",
    ):
        assert (output / name).exists(), name
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert not (output / "preprocessor_config.json").exists()  # the prior holds no part of the VQ-VAE
    assert any(p.name.startswith("events.out.tfevents") for p in (output / "logs").rglob("*"))
    assert "Encoded 64 images of split 'train'" in log and "Encoded 24 images of split 'test'" in log

    prior = VQVAEPriorForCausalLM.from_pretrained(output)
    config = prior.config
    assert (config.codebook_size, config.grid_size, config.num_classes) == (16, GRID, NUM_CLASSES)
    assert (config.hidden_size, config.num_hidden_layers) == (32, 2)  # from the config file
    assert config.id2label[3] == "cat"

    reference = json.loads((output / VQVAE_REFERENCE_NAME).read_text())
    # Relative to the prior's folder: the two can move together.
    assert (output / reference["vqvae_model_name_or_path"]).resolve() == vqvae_dir.resolve()
    assert reference["vqvae_codes_fingerprint"] == codes_fingerprint(VQVAEModel.from_pretrained(vqvae_dir))

    entries = [json.loads(line) for line in (output / "validation_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries] == [3, 6]
    last = entries[-1]
    assert last["num_images"] == 24  # the whole validation split
    assert last["nll_bits_per_code"] == pytest.approx(last["nll_nats_per_code"] / np.log(2))
    assert last["uniform_prior_bits_per_code"] == 4.0 and 0 < last["nll_nats_per_code"] < 10
    # One row per class, `--num_validation_samples` 32x32 images per row, 2-pixel padding.
    assert Image.open(output / "samples/step-6.png").size == (2 * 34 + 2, NUM_CLASSES * 34 + 2)

    card = (output / "README.md").read_text()
    assert "{{" not in card and "library_name: hf_vqvae" in card and str(vqvae_dir) in card
    assert reference["vqvae_codes_fingerprint"] in card and "3: cat" in card and "| 6 |" in card
    assert "scripts/train_prior.py --vqvae_model_name_or_path" in card and '"command_line"' not in card
    assert '"max_train_steps": 6' in card and "![samples](samples/step-6.png)" in card


@pytest.mark.slow
def test_resume_from_latest_reuses_the_codes_and_continues_exactly(trained, vqvae_dir, tmp_path):
    # Stop after checkpoint-4 (a copy of it in a new folder), resume from `latest` for the last 2 steps: same data
    # position and RNG, so the same weights and samples as the uninterrupted run.
    output = tmp_path / "resumed"
    output.mkdir()
    shutil.copytree(trained["output"] / "checkpoint-4", output / "checkpoint-4")
    result = run_prior(
        prior_args(
            vqvae_dir,
            output,
            6,
            [
                "--prior_config_name_or_path",
                str(trained["config_dir"]),
                "--label_column",
                "label",
                "--codes_cache_dir",
                str(trained["output"] / "codes"),
                "--resume_from_checkpoint",
                "latest",
            ],
        )
    )
    log = result.stdout + result.stderr
    assert "Reusing the codes cache" in log and "Encoded" not in log
    assert f"Resuming from {output / 'checkpoint-4'}" in log
    assert [json.loads(line)["step"] for line in (output / "validation_log.jsonl").read_text().splitlines()] == [6]
    expected, actual = load_file(trained["output"] / "model.safetensors"), load_file(output / "model.safetensors")
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
    assert (output / "samples/step-6.png").read_bytes() == (trained["output"] / "samples/step-6.png").read_bytes()


@pytest.mark.slow
def test_codes_cache_of_another_vqvae_is_refused_then_rebuilt(trained, tmp_path):
    other = save_vqvae(tmp_path / "other_vqvae", seed=1)  # same sizes, other weights
    codes_dir = trained["output"] / "codes"
    args = prior_args(
        other,
        tmp_path / "run",
        2,
        ["--config_overrides", TINY_PRIOR_OVERRIDES, "--label_column", "label", "--codes_cache_dir", str(codes_dir)],
    )
    result = run_prior(args, launcher=False, check=False)
    assert result.returncode != 0
    assert "was made with other settings (different: vqvae_codes_fingerprint)" in result.stderr
    assert "--overwrite_codes_cache" in result.stderr

    # Rebuilt on request (in this process: the same code path, without a second launch). Without `--label_column`
    # the codes carry no labels and the prior is unconditional.
    from accelerate import PartialState

    cache = tmp_path / "codes"
    shutil.copytree(codes_dir, cache)
    args = train_prior.parse_args(
        prior_args(
            other,
            tmp_path / "run",
            2,
            ["--config_overrides", TINY_PRIOR_OVERRIDES, "--codes_cache_dir", str(cache), "--overwrite_codes_cache"],
        )
    )
    vqvae = VQVAEModel.from_pretrained(other).eval()
    codes, class_names = train_prior.get_codes(args, PartialState(), vqvae, VQVAEImageProcessor.from_pretrained(other))
    assert class_names is None and codes["train"]["labels"] is None
    assert codes["train"]["codes"].shape == (64, *GRID) and codes["test"]["codes"].shape == (24, *GRID)
    saved = torch.load(cache / "train.pt", weights_only=True)["settings"]
    assert saved["vqvae_codes_fingerprint"] == codes_fingerprint(vqvae) and saved["label_column"] is None
    pixel_values = VQVAEImageProcessor.from_pretrained(other)(
        load_images(SAMPLE / "train-00000-of-00001.parquet", 2), return_tensors="pt"
    ).pixel_values
    assert torch.equal(codes["train"]["codes"][:2].long(), vqvae.encode(pixel_values).codes)

    prior = train_prior.build_prior(args, vqvae.config, class_names)
    assert (prior.config.num_classes, prior.config.grid_size, prior.config.hidden_size) == (0, GRID, 32)
    train_dataloader, validation_dataloader = train_prior.get_dataloaders(args, codes, prior.code_mapping)
    batch = next(iter(train_dataloader))
    assert batch["input_ids"].shape == (8, 1 + 64) and bool((batch["input_ids"][:, 0] == 16).all())  # bos prompt
    assert torch.isfinite(prior(**batch).loss)


def test_train_prior_rejects_bad_arguments(tmp_path):
    base = prior_args(tmp_path / "vqvae", tmp_path / "out", 2)
    cases = [
        (["--push_to_hub"], "needs `--hub_model_id`"),
        (["--config_overrides", "codebook_size=32"], "cannot set ['codebook_size']"),
        (["--pretrained_prior_name_or_path", "a", "--prior_config_name_or_path", "b"], "at most one of"),
        (["--pretrained_prior_name_or_path", "a", "--config_overrides", "hidden_size=8"], "pretrained prior"),
        (["--validation_guidance_scale", "2"], "needs a class-conditional prior"),
        (["--num_validation_samples", "0"], "`--num_validation_samples` must be >= 1"),
        (["--validation_temperature", "0"], "`--validation_temperature` must be > 0"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            train_prior.parse_args(base + extra)
    with pytest.raises(ValueError, match="Give the data"):
        train_prior.parse_args(["--vqvae_model_name_or_path", "x"])


def test_train_prior_needs_a_class_label_column(tmp_path, vqvae_dir):
    from accelerate import PartialState

    args = train_prior.parse_args(prior_args(vqvae_dir, tmp_path / "out", 2, ["--label_column", "index"]))
    vqvae = VQVAEModel.from_pretrained(vqvae_dir)
    with pytest.raises(ValueError, match="must be a `ClassLabel` column"):
        train_prior.get_codes(args, PartialState(), vqvae, VQVAEImageProcessor.from_model_config(vqvae.config))
    args = dataclasses.replace(args, label_column="missing")  # the arguments are frozen
    with pytest.raises(ValueError, match="is not one of the columns"):
        train_prior.get_codes(args, PartialState(), vqvae, VQVAEImageProcessor.from_model_config(vqvae.config))
    args = dataclasses.replace(args, label_column="label", validation_classes=[3, 12])
    with pytest.raises(ValueError, match=r"`--validation_classes` \[12\] are not class ids"):
        train_prior.get_codes(args, PartialState(), vqvae, VQVAEImageProcessor.from_model_config(vqvae.config))


@pytest.mark.slow
def test_fine_tuning_checks_the_pretrained_prior_against_the_vqvae_and_data(trained, vqvae_dir, tmp_path):
    args = train_prior.parse_args(
        prior_args(
            vqvae_dir,
            tmp_path / "out",
            2,
            ["--pretrained_prior_name_or_path", str(trained["output"]), "--label_column", "label"],
        )
    )
    names = [f"class {i}" for i in range(NUM_CLASSES)]
    vqvae_config = VQVAEModel.from_pretrained(vqvae_dir).config
    prior = train_prior.build_prior(args, vqvae_config, names)
    expected = load_file(trained["output"] / "model.safetensors")
    assert all(torch.equal(prior.state_dict()[k], v) for k, v in expected.items())
    assert prior.config.id2label[3] == "class 3"  # the names of the data it is fine-tuned on
    with pytest.raises(ValueError, match=r"`num_classes` 10 \(needed: 3\)"):
        train_prior.build_prior(args, vqvae_config, names[:3])
    with pytest.raises(ValueError, match=r"`codebook_size` 16 \(needed: 32\)"):
        train_prior.build_prior(args, make_tiny_config(image_size=32, codebook_size=32), names)


def test_push_uploads_the_prior_without_checkpoints_logs_or_codes(monkeypatch, tmp_path):
    import huggingface_hub
    from accelerate import PartialState
    from huggingface_hub.utils import filter_repo_objects

    PartialState()  # accelerate's logger needs a state
    uploads = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kwargs: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(
        huggingface_hub,
        "upload_folder",
        lambda **kwargs: uploads.append(kwargs) or SimpleNamespace(commit_url="http://hub/commit"),
    )
    args = train_prior.parse_args(prior_args("vqvae", tmp_path / "out", 2, ["--push_to_hub", "--hub_model_id", "o/p"]))
    push_folder(
        args.output_dir,
        args.hub_model_id,
        "Upload VQ-VAE prior trained with hf_vqvae",
        token=args.hub_token,
        ignore_patterns=train_prior.upload_ignore_patterns(args),
    )
    assert uploads[0]["repo_id"] == "o/p" and uploads[0]["folder_path"] == str(tmp_path / "out")
    files = [
        "config.json",
        "model.safetensors",
        "vqvae_reference.json",
        "README.md",
        "samples/step-2.png",
        "codes/train.pt",
        "checkpoint-2/prior/model.safetensors",
        "logs/train_prior/events",
        ".tmp-save-x/a",
    ]
    kept = list(filter_repo_objects(files, ignore_patterns=uploads[0]["ignore_patterns"]))
    assert kept == files[:5]


# ---------------------------------------------------------------------------------------------------------- sampling


@pytest.mark.slow
def test_sample_script_is_reproducible_with_a_seed(trained, tmp_path, capsys):
    def run(seed, name, extra=()):
        argv = [
            "--prior",
            str(trained["output"]),
            "--num_per_class",
            "3",
            "--classes",
            "0",
            "cat",
            "9",
            "--guidance_scale",
            "2.0",
            "--top_k",
            "8",
            "--temperature",
            "0.9",
            "--seed",
            str(seed),
            "--output_file",
            str(tmp_path / f"{name}.png"),
            *extra,
        ]
        return sample.main(sample.parse_args(argv))

    first = run(0, "a", ["--codes_file", str(tmp_path / "a.pt")])
    run(0, "b")
    run(1, "c")
    assert first == {"output_file": str(tmp_path / "a.png"), "num_images": 9, "num_rows": 3, "size": (104, 104)}
    assert Image.open(tmp_path / "a.png").size == (3 * 34 + 2, 3 * 34 + 2)  # 3 classes x 3 images of 32x32
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    saved = torch.load(tmp_path / "a.pt", weights_only=False)
    assert saved["codes"].shape == (9, *GRID) and saved["codes"].dtype == torch.long
    assert saved["class_labels"].tolist() == [0, 0, 0, 3, 3, 3, 9, 9, 9]
    assert "row 1: class 3 (cat)" in capsys.readouterr().out


@pytest.mark.slow
def test_sample_script_rejects_bad_arguments(trained, tmp_path):
    prior = ["--prior", str(trained["output"])]
    for extra, message in [
        (["--temperature", "0"], "`--temperature` must be > 0"),
        (["--top_p", "1.5"], r"`--top_p` must lie in \(0, 1\]"),
        (["--top_k", "-1"], "`--top_k` must be >= 0"),
        (["--num_per_class", "0"], "`--num_per_class` must be >= 1"),
        (["--output_file", "x.jpg"], "must end in .png"),
    ]:
        with pytest.raises(ValueError, match=message):
            sample.parse_args(prior + extra)
    output = ["--output_file", str(tmp_path / "x.png")]
    with pytest.raises(ValueError, match="Unknown class name 'unicorn'"):
        sample.main(sample.parse_args(prior + output + ["--classes", "unicorn"]))
    with pytest.raises(ValueError, match="class-conditional: give `--num_per_class`"):
        sample.main(sample.parse_args(prior + output + ["--num_samples", "4"]))
    with pytest.raises(SystemExit):  # argparse: missing `--prior`
        sample.parse_args([])


# ---------------------------------------------------------------------------------------------------------- pipelines


def test_reconstruction_pipeline(vqvae_dir, tmp_path):
    reconstruct = pipeline("vqvae-reconstruction", model=str(vqvae_dir))
    assert isinstance(reconstruct, VQVAEReconstructionPipeline)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    images[2].save(tmp_path / "image.png")

    out = reconstruct(images[0], return_codes=True)
    assert isinstance(out["image"], Image.Image) and out["image"].size == (32, 32)
    assert out["codes"].shape == GRID and out["codes"].dtype == torch.long and 0 <= out["codes"].min()
    model, processor = reconstruct.model, reconstruct.image_processor
    with torch.no_grad():
        codes = model.encode(processor(images[0]).pixel_values).codes
        expected = processor.postprocess(model.decode(codes).reconstruction)[0]
    assert torch.equal(out["codes"], codes[0]) and np.array_equal(np.array(out["image"]), np.array(expected))

    # A list (a path among the images), batched: one dict per image, the same as one at a time.
    batched = reconstruct([images[0], images[1], str(tmp_path / "image.png")], batch_size=2)
    assert [sorted(o) for o in batched] == [["image"]] * 3
    assert np.array_equal(np.array(batched[0]["image"]), np.array(out["image"]))
    assert np.array_equal(np.array(batched[2]["image"]), np.array(reconstruct(images[2])["image"]))
    assert reconstruct(images[0], output_type="np")["image"].shape == (32, 32, 3)
    assert reconstruct(images[0], output_type="pt")["image"].shape == (3, 32, 32)

    # A folder without preprocessor_config.json gets the processor of the model config.
    VQVAEModel.from_pretrained(vqvae_dir).save_pretrained(tmp_path / "weights_only")
    assert pipeline("vqvae-reconstruction", model=str(tmp_path / "weights_only"))(images[0])["image"].size == (32, 32)
    with pytest.raises(ValueError, match="`output_type` must be one of"):
        reconstruct(images[0], output_type="jpeg")
    with pytest.raises(ValueError, match="must be one image"):
        reconstruct(np.zeros((2, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="needs a `VQVAEModel`"):
        pipeline("vqvae-reconstruction", model=VQVAEPriorForCausalLM(make_tiny_prior_config()))


@pytest.mark.slow
def test_generation_pipeline(trained, vqvae_dir, tmp_path):
    generate = pipeline("vqvae-generation", model=str(trained["output"]))  # the VQ-VAE from vqvae_reference.json
    assert isinstance(generate, VQVAEGenerationPipeline)
    assert model_fingerprint(generate.vqvae) == model_fingerprint(VQVAEModel.from_pretrained(vqvae_dir))

    samples = generate(["airplane", 3], num_images=2, guidance_scale=2.0, seed=0, return_codes=True)
    assert [(s["class_label"], s["label"]) for s in samples] == [(0, "airplane")] * 2 + [(3, "cat")] * 2
    assert all(s["image"].size == (32, 32) and s["codes"].shape == GRID for s in samples)
    codes = torch.stack([s["codes"] for s in samples])
    assert codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 16
    # The images are the decoded codes.
    with torch.no_grad():
        decoded = generate.image_processor.postprocess(generate.vqvae.decode(codes).reconstruction)
    assert all(np.array_equal(np.array(s["image"]), np.array(d)) for s, d in zip(samples, decoded))
    # Seeded: same seed, same codes; the global random state is untouched.
    state = torch.get_rng_state()
    again = generate(["airplane", 3], num_images=2, guidance_scale=2.0, seed=0, return_codes=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(codes, torch.stack([s["codes"] for s in again]))

    unconditional = generate(num_images=3, seed=1, top_p=0.9, output_type="np")
    assert [(s["class_label"], s["label"], s["image"].shape) for s in unconditional] == [(None, None, (32, 32, 3))] * 3

    # The VQ-VAE passed explicitly, as a model; one of another codebook size does not belong to this prior.
    explicit = pipeline("vqvae-generation", model=str(trained["output"]), vqvae=VQVAEModel.from_pretrained(vqvae_dir))
    assert torch.equal(
        codes,
        torch.stack(
            [
                s["codes"]
                for s in explicit(["airplane", 3], num_images=2, guidance_scale=2.0, seed=0, return_codes=True)
            ]
        ),
    )
    with pytest.raises(ValueError, match="`codebook_size` 32 but the prior models 16 codes"):
        pipeline(
            "vqvae-generation",
            model=str(trained["output"]),
            vqvae=VQVAEModel(make_tiny_config(image_size=32, codebook_size=32)),
        )
    # A VQ-VAE with a fine-tuned decoder still decodes this prior's codes; another encoder or codebook does not.
    tuned = VQVAEModel.from_pretrained(vqvae_dir)
    with torch.no_grad():
        tuned.decoder.conv_in.weight.add_(0.1)
    with mock.patch.object(hf_vqvae.pairing.logger, "warning") as warning:
        load_vqvae_for_prior(generate.model, tuned)
        assert not warning.called
        with torch.no_grad():
            tuned.encoder.proj.weight.add_(0.1)
        load_vqvae_for_prior(generate.model, tuned)
        assert "encoder or codebook differ" in warning.call_args.args[0]
    # A prior folder without vqvae_reference.json needs `vqvae=`.
    VQVAEPriorForCausalLM.from_pretrained(trained["output"]).save_pretrained(tmp_path / "bare_prior")
    with pytest.raises(ValueError, match="pass one"):
        pipeline("vqvae-generation", model=str(tmp_path / "bare_prior"))

    for kwargs, message in [
        ({"class_labels": ["unicorn"]}, "Unknown class name 'unicorn'"),
        ({"class_labels": [10]}, r"ids in \[0, 10\)"),
        ({"class_labels": []}, "`class_labels` is empty"),
        ({"num_images": 0}, "`num_images` must be a positive integer"),
        ({"top_p": 0.0}, r"`top_p` must lie in \(0, 1\]"),
        ({"temperature": -1.0}, "`temperature` must be > 0"),
        ({"guidance_scale": 2.0}, "`guidance_scale` needs `class_labels`"),
        ({"output_type": "jpeg"}, "`output_type` must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            generate(**kwargs)
    with pytest.raises(TypeError, match="needs a `VQVAEPriorForCausalLM`"):
        pipeline("vqvae-generation", model=VQVAEModel.from_pretrained(vqvae_dir), vqvae=str(vqvae_dir))


def test_generation_pipeline_unconditional_prior_rejects_classes(vqvae_dir, tmp_path):
    prior = VQVAEPriorForCausalLM(make_tiny_prior_config(grid_size=GRID, num_classes=0))
    generate = pipeline("vqvae-generation", model=prior, vqvae=str(vqvae_dir))
    assert len(generate(num_images=2, seed=0)) == 2
    with pytest.raises(ValueError, match="This prior is unconditional"):
        generate([0])


# ---------------------------------------------------------------------------------------------------------- bits/dim

import evaluate_bits_per_dim  # noqa: E402
import train_classifier  # noqa: E402


@pytest.mark.slow
def test_code_log_likelihood_matches_the_training_loss(trained):
    prior = VQVAEPriorForCausalLM.from_pretrained(trained["output"]).eval()
    codes = torch.randint(0, prior.config.codebook_size, (3, *GRID))
    log_likelihood = prior.code_log_likelihood(codes, [0, 1, 2])
    assert log_likelihood.shape == (3, *GRID) and bool((log_likelihood <= 0).all())
    mapping = prior.code_mapping
    loss = prior(mapping.codes_to_input_ids(codes, [0, 1, 2]), labels=mapping.codes_to_labels(codes)).loss
    torch.testing.assert_close(-log_likelihood.mean(), loss, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bits_per_dim_script_reports_both_bounds(trained, vqvae_dir, tmp_path):
    args = [
        "--model",
        str(vqvae_dir),
        "--prior",
        str(trained["output"]),
        "--data_files",
        str(SAMPLE / "test-*.parquet"),
        "--max_samples",
        "20",
        "--scale_fit_data_files",
        str(SAMPLE / "train-*.parquet"),
        "--scale_fit_samples",
        "40",
        "--batch_size",
        "10",
        "--output_file",
        str(tmp_path / "bpd.json"),
    ]
    results = evaluate_bits_per_dim.main(evaluate_bits_per_dim.parse_args(args))
    assert results == json.loads((tmp_path / "bpd.json").read_text())
    assert (
        results["num_images"] == 20 and results["dims_per_image"] == 3 * 32 * 32 and results["codes_per_image"] == 64
    )
    # The uniform prior costs N log2 K bits per image; the bounds add the decoder's term.
    assert results["uniform_prior_bits_per_dim"] == pytest.approx(64 * 4 / 3072)
    for bound in ("uniform", "learned"):
        assert results[f"bits_per_dim_{bound}_prior"] == pytest.approx(
            results["decoder_bits_per_dim"] + results[f"{bound}_prior_bits_per_dim"]
        )
    assert 0 < results["decoder_scale"] < 1 and results["paper_vqvae"] == 4.67
    assert any("marginalised over 10" in assumption for assumption in results["assumptions"])

    # A prior trained on another VQ-VAE's codes is refused; an MSE decoder needs train images for its scale.
    other = save_vqvae(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="another VQ-VAE"):
        evaluate_bits_per_dim.main(evaluate_bits_per_dim.parse_args(["--model", str(other), *args[2:]]))
    with pytest.raises(ValueError, match="scale_fit_data_files"):
        evaluate_bits_per_dim.main(evaluate_bits_per_dim.parse_args(args[:8]))


def test_discretized_gaussian_decoder_gives_bits_per_dim_without_a_fitted_scale(tmp_path):
    model_dir = save_vqvae(tmp_path / "dg", reconstruction_loss="discretized_gaussian")
    results = evaluate_bits_per_dim.main(
        evaluate_bits_per_dim.parse_args(
            ["--model", str(model_dir), "--data_files", str(SAMPLE / "test-*.parquet"), "--max_samples", "8"]
        )
    )
    assert results["decoder_scale"] == "per-pixel, predicted by the decoder"
    # An untrained decoder is no better than uniform over the 256 values by much: about 8 bits per dim.
    assert 5 < results["decoder_bits_per_dim"] < 12 and "bits_per_dim_learned_prior" not in results


@pytest.mark.slow
def test_classifier_scores_the_share_of_samples_of_the_requested_class(trained, tmp_path):
    classifier_dir = tmp_path / "classifier"
    results = train_classifier.main(
        train_classifier.parse_args(
            [
                "--train_data_files",
                str(SAMPLE / "train-*.parquet"),
                "--validation_data_files",
                str(SAMPLE / "test-*.parquet"),
                "--hidden_sizes",
                "8,16,32",
                "--num_train_epochs",
                "1",
                "--train_batch_size",
                "100",
                "--output_dir",
                str(classifier_dir),
            ]
        )
    )
    assert 0 <= results["test_accuracy"] <= 1 and len(results["curve"]) == 1
    assert json.loads((classifier_dir / "results.json").read_text())["test_accuracy"] == results["test_accuracy"]
    assert f"{results['test_accuracy']:.2%}" in (classifier_dir / "README.md").read_text()
    result = sample.main(
        sample.parse_args(
            [
                "--prior",
                str(trained["output"]),
                "--num_per_class",
                "2",
                "--classes",
                "0",
                "1",
                "--seed",
                "0",
                "--output_file",
                str(tmp_path / "s.png"),
                "--classifier",
                str(classifier_dir),
                "--results_file",
                str(tmp_path / "share.json"),
            ]
        )
    )
    share = result["classifier"]
    assert (
        share["num_samples"] == 4
        and 0 <= share["accuracy"] <= 1
        and set(share["per_class"]) == {"airplane", "automobile"}
    )
    assert json.loads((tmp_path / "share.json").read_text())["accuracy"] == share["accuracy"]

    # The share goes into the prior's card with the command that measured it; a rerun replaces that section.
    prior_dir = shutil.copytree(trained["output"], tmp_path / "prior", ignore=shutil.ignore_patterns("checkpoint-*"))
    for _ in range(2):
        sample.main(
            sample.parse_args(
                [
                    "--prior",
                    str(prior_dir),
                    "--num_per_class",
                    "2",
                    "--classes",
                    "0",
                    "1",
                    "--seed",
                    "0",
                    "--output_file",
                    str(tmp_path / "s.png"),
                    "--classifier",
                    str(classifier_dir),
                    "--model_card_section",
                    "Class-conditional samples",
                ]
            )
        )
    card = (prior_dir / "README.md").read_text()
    assert card.count("### Class-conditional samples") == 1 and "--classifier" in card
    assert f"| all (4 samples; chance 10%) | {share['accuracy']:.1%} |" in card
    with pytest.raises(ValueError, match="add `--classifier`"):
        sample.parse_args(["--prior", str(prior_dir), "--model_card_section", "x"])


def test_the_shipped_prior_finds_and_matches_the_shipped_vqvae():
    prior_dir = REPO_ROOT / "models" / "prior-cifar10"
    reference = json.loads((prior_dir / VQVAE_REFERENCE_NAME).read_text())
    assert reference["vqvae_model_name_or_path"] == "../vqvae-cifar10"  # found beside it, from any working directory
    generate = pipeline("vqvae-generation", model=str(prior_dir))
    assert codes_fingerprint(generate.vqvae) == reference["vqvae_codes_fingerprint"]
    sample = generate([8], num_images=1, guidance_scale=2.0, seed=0, return_codes=True)[0]
    assert sample["label"] == "ship" and sample["image"].size == (32, 32) and sample["codes"].shape == (8, 8)


def test_code_substitution_rate_corrupts_the_training_codes_only(tmp_path):
    """`--code_substitution_rate` (the background prior of Ren et al. 2019): training inputs and targets are the
    corrupted codes, drawn anew each batch; validation codes stay clean; the rate is a probability."""
    codes = {
        "train": {"codes": torch.zeros(32, 4, 4, dtype=torch.int16), "labels": None},
        "test": {"codes": torch.zeros(16, 4, 4, dtype=torch.int16), "labels": None},
    }
    base = prior_args(tmp_path / "vqvae", tmp_path / "out", 2)
    clean = train_prior.parse_args(base)
    assert clean.code_substitution_rate == 0.0
    batch = next(iter(train_prior.get_dataloaders(clean, codes, None, 16)[0]))
    assert not batch["codes"].any()
    corrupted = train_prior.parse_args(base + ["--code_substitution_rate", "1.0"])
    torch.manual_seed(0)
    train, validation = train_prior.get_dataloaders(corrupted, codes, None, 16)
    first, second = next(iter(train)), next(iter(train))
    assert first["codes"].any() and int(first["codes"].max()) < 16 and torch.equal(first["labels"], first["codes"])
    assert not torch.equal(first["codes"], second["codes"])  # fresh substitutions every batch
    assert not next(iter(validation))["labels"].any()
    with pytest.raises(ValueError, match=r"`--code_substitution_rate` is a probability in \[0, 1\]"):
        train_prior.parse_args(base + ["--code_substitution_rate", "1.5"])
