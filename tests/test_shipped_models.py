"""The shipped `models/*` folders, as shipped: pinned outputs, code copies that match the package, and clean cards.

The pinned values (like transformers' integration tests) were computed once from the code at commit d835c43 with

    PYTHONPATH=$PWD python -c "import sys; sys.path.insert(0, 'tests'); import test_shipped_models as t; t.print_outputs()"

which prints, for every folder, the values compared below. A refactor of the package must keep them.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from shipped_models import (
    MODELS,
    REPO_ROOT,
    classifier_outputs,
    pixelcnn_prior_outputs,
    prior_outputs,
    sample_images,
    vqvae_audio_outputs,
    vqvae_image_outputs,
)


SHIPPED = [
    "vqvae-cifar10",
    "vqvae-cifar10-pixelcnn-decoder",
    "prior-cifar10",
    "pixelcnn-prior-cifar10",
    "classifier-cifar10",
    "vqvae-fsdd",
    "vqvae-fsdd-speakers",
]
ATOL = 1e-4

# fmt: off
VQVAE_CIFAR10_CODES = [
    [[440, 504, 167, 440, 317, 326, 170, 358], [315, 440, 375, 179, 332, 187, 220, 504],
     [196, 96, 408, 161, 220, 351, 319, 214], [196, 279, 16, 139, 371, 251, 386, 289],
     [79, 371, 451, 221, 395, 419, 448, 302], [399, 287, 132, 126, 380, 303, 37, 439],
     [372, 242, 477, 182, 435, 477, 505, 413], [54, 439, 227, 367, 235, 503, 102, 299]],
    [[467, 467, 467, 467, 467, 111, 467, 467], [479, 467, 467, 111, 455, 98, 90, 467],
     [263, 28, 41, 94, 486, 476, 50, 90], [177, 501, 186, 294, 392, 110, 231, 63],
     [199, 278, 41, 169, 392, 307, 312, 187], [120, 495, 240, 495, 436, 124, 179, 161],
     [95, 148, 7, 163, 154, 502, 118, 338], [435, 245, 51, 207, 330, 261, 469, 280]],
]
FSDD_INPUT_VALUES = [-0.405093, -0.474002, -0.323183, -0.019837, -0.178041, -0.334658]  # input_values[0, 1000:1006]
# Each entry: (what is compared, how to take it from the outputs, expected value); ints compare exactly.
PINNED = {
    "vqvae-cifar10": [
        ("codes", lambda o: o["codes"], VQVAE_CIFAR10_CODES),
        ("pixel_values[0, 0, 0, :6]", lambda o: o["pixel_values"][0, 0, 0, :6],
         [0.239216, 0.247059, 0.294118, 0.301961, 0.254902, 0.223529]),
        ("reconstruction[0, 0, 0, :6]", lambda o: o["reconstruction"][0, 0, 0, :6],
         [0.207812, 0.266399, 0.313097, 0.347136, 0.344142, 0.339908]),
        ("reconstruction[1, 2, -1, -6:]", lambda o: o["reconstruction"][1, 2, -1, -6:],
         [0.228197, 0.347486, 0.434065, 0.470668, 0.528854, 0.561710]),
        ("loss", lambda o: o["loss"], -16.967251),
    ],
    # Pinned when the folder was shipped (session 8, from the package), with the command in the module docstring. Its
    # encoder and codebook are vqvae-cifar10's (`--freeze_encoder`): the same codes.
    "vqvae-cifar10-pixelcnn-decoder": [
        ("codes", lambda o: o["codes"], VQVAE_CIFAR10_CODES),
        ("reconstruction[0, 0, 0, :6] (teacher-forced mean)", lambda o: o["reconstruction"][0, 0, 0, :6],
         [0.090021, 0.290501, 0.269576, 0.340876, 0.294332, 0.260321]),
        ("reconstruction[1, 2, -1, -6:]", lambda o: o["reconstruction"][1, 2, -1, -6:],
         [0.162361, 0.243518, 0.308751, 0.405790, 0.495607, 0.539235]),
        ("bits_per_dim", lambda o: o["bits_per_dim"], [4.017917, 3.237941]),
        ("loss", lambda o: o["loss"], 10.100855),
    ],
    "prior-cifar10": [
        ("input_ids[:, 0] (class prompts)", lambda o: o["input_ids"][:, 0], [516, 521]),
        ("logits[0, 0, :6]", lambda o: o["logits"][0, 0, :6],
         [-1.297988, -0.712864, 0.412074, -0.072699, 0.273501, -0.031782]),
        ("logits[1, -1, :6]", lambda o: o["logits"][1, -1, :6],
         [-3.061003, 1.329902, -1.399926, -2.319758, 1.470354, -0.678062]),
        ("logits.argmax(-1)[:, :16]", lambda o: o["logits"].argmax(-1)[:, :16],
         [[457, 440, 504, 440, 440, 440, 447, 383, 440, 428, 440, 440, 101, 127, 187, 106],
          [90, 467, 467, 467, 467, 467, 111, 467, 467, 262, 467, 467, 111, 111, 397, 467]]),
        ("loss", lambda o: o["loss"], 5.274718),
    ],
    # Pinned when the folder was shipped (package code of commit c733476), with the command in the module docstring.
    "pixelcnn-prior-cifar10": [
        ("logits[0, 0, 0, :6]", lambda o: o["logits"][0, 0, 0, :6],
         [-2.792063, -2.249625, -1.492810, -1.965682, -1.989632, -1.560953]),
        ("logits[1, -1, -1, :6]", lambda o: o["logits"][1, -1, -1, :6],
         [-4.804549, -3.912642, -4.691058, -5.208129, -4.756240, -5.351501]),
        ("logits.argmax(-1)[:, :2] (first 16 codes)", lambda o: o["logits"].argmax(-1)[:, :2].flatten(1),
         [[457, 440, 504, 402, 440, 447, 447, 113, 440, 326, 440, 440, 89, 330, 113, 358],
          [90, 467, 467, 467, 467, 467, 111, 467, 467, 467, 467, 467, 111, 111, 397, 467]]),
        ("loss", lambda o: o["loss"], 5.316716),
    ],
    "classifier-cifar10": [
        ("pixel_values[1, 1, 5, :6]", lambda o: o["pixel_values"][1, 1, 5, :6],
         [0.874510, 0.843137, 0.843137, 0.843137, 0.843137, 0.843137]),
        ("logits", lambda o: o["logits"],
         [[-1.765135, -2.115243, -2.345830, 4.232967, -3.038371, 2.142318, -0.022105, -2.934717, -1.390576, -2.266230],
          [1.703554, 3.583990, -5.061625, -4.444026, -4.589226, -6.943047, -4.971977, -8.050618, 7.430083, -0.079070]]),
    ],
    "vqvae-fsdd": [
        ("codes", lambda o: o["codes"],
         [[410, 152, 76, 54, 435, 478, 334, 435, 76, 139, 440, 478, 411, 16, 4, 122, 408, 163, 333, 5, 387, 12, 290,
           137, 184, 103, 498, 439, 118, 248, 77, 431, 174, 491, 469, 173, 498, 135]]),
        ("input_values[0, 1000:1006]", lambda o: o["input_values"][0, 1000:1006], FSDD_INPUT_VALUES),
        ("reconstruction[0, 0, 1000:1006]", lambda o: o["reconstruction"][0, 0, 1000:1006],
         [-0.266306, -0.265130, -0.238083, -0.195095, -0.137872, -0.051294]),
        ("loss", lambda o: o["loss"], 0.446651),
    ],
    "vqvae-fsdd-speakers": [
        ("codes", lambda o: o["codes"],
         [[117, 11, 329, 439, 453, 352, 306, 250, 48, 473, 250, 352, 250, 323, 80, 505, 257, 111, 266, 231, 503, 446,
           32, 464, 186, 483, 89, 443, 157, 483, 89, 475, 186, 469, 113, 340, 73, 475]]),
        ("input_values[0, 1000:1006]", lambda o: o["input_values"][0, 1000:1006], FSDD_INPUT_VALUES),
        ("reconstruction[0, 0, 1000:1006]", lambda o: o["reconstruction"][0, 0, 1000:1006],
         [-0.296980, -0.270090, -0.255430, -0.216590, -0.152639, -0.059891]),
        ("loss", lambda o: o["loss"], 0.432936),
    ],
}
# fmt: on


def package_outputs(name: str) -> dict[str, torch.Tensor]:
    """`name`'s outputs on its sample input, loaded by the Auto classes with the package's classes (never the folder's
    code copies)."""
    from transformers import (
        AutoFeatureExtractor,
        AutoImageProcessor,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
    )

    import hf_vqvae  # noqa: F401 (registers the package's classes with the Auto classes)

    def load(auto_class):
        loaded = auto_class.from_pretrained(MODELS / name)
        module = type(loaded).__module__
        assert module.startswith(("hf_vqvae.", "transformers.")), f"models/{name} loaded {module}, not the package"
        return loaded.eval() if isinstance(loaded, torch.nn.Module) else loaded

    if name in ("vqvae-cifar10", "vqvae-cifar10-pixelcnn-decoder"):
        return vqvae_image_outputs(load(AutoModel), load(AutoImageProcessor))
    if name in ("vqvae-fsdd", "vqvae-fsdd-speakers"):
        return vqvae_audio_outputs(load(AutoModel), load(AutoFeatureExtractor), MODELS / name)
    if name == "prior-cifar10":
        return prior_outputs(load(AutoModelForCausalLM), torch.tensor(VQVAE_CIFAR10_CODES), sample_images()[1])
    if name == "pixelcnn-prior-cifar10":
        return pixelcnn_prior_outputs(load(AutoModel), torch.tensor(VQVAE_CIFAR10_CODES), sample_images()[1])
    if name == "classifier-cifar10":
        return classifier_outputs(load(AutoModelForImageClassification), load(AutoImageProcessor))
    raise ValueError(f"no sample input defined for models/{name}")


def assert_pinned(name: str, outputs: dict[str, torch.Tensor], origin: str):
    for what, take, expected in PINNED[name]:
        actual = take(outputs)
        expected = torch.tensor(expected)
        message = f"models/{name} ({origin}): {what} differs from the pinned values"
        if expected.dtype.is_floating_point:
            torch.testing.assert_close(actual.float(), expected, atol=ATOL, rtol=0, msg=message)
        else:
            assert actual.tolist() == expected.tolist(), message


def print_outputs():
    """Print the values `PINNED` compares, from today's package (the command in the module docstring)."""
    for name in SHIPPED:
        outputs = package_outputs(name)
        for what, take, _ in PINNED[name]:
            print(f"{name} {what}: {[round(v, 6) for v in take(outputs).flatten().tolist()]}")


def test_every_shipped_folder_is_pinned():
    assert sorted(path.name for path in MODELS.iterdir() if path.is_dir()) == sorted(SHIPPED) == sorted(PINNED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_outputs_match_pinned_values(name):
    assert_pinned(name, package_outputs(name), "hf_vqvae classes")


@pytest.mark.slow  # ~100 full forward passes of the shipped PixelCNN (the tiny-model tests cover the fast lane)
def test_shipped_pixelcnn_prior_cached_sampler_draws_the_naive_samplers_codes():
    """On the shipped weights, not only on tiny random ones: the same codes for a fixed seed, guided and completing."""
    from hf_vqvae import VQVAEPixelCNNPriorModel

    prior = VQVAEPixelCNNPriorModel.from_pretrained(MODELS / "pixelcnn-prior-cifar10").eval()
    prompt = torch.tensor(VQVAE_CIFAR10_CODES[1]).flatten()[None, :36]  # four rows and a half of a test image's codes
    for kwargs in (
        {"class_labels": "cat", "seed": 0},
        {"class_labels": "horse", "guidance_scale": 2.0, "prompt_codes": prompt, "seed": 1},
    ):
        cached = prior.generate_codes(**kwargs)
        assert torch.equal(cached, prior.generate_codes(use_cache=False, **kwargs)), kwargs
    assert torch.equal(cached.flatten(1)[:, :36], prompt)


# --- the folders' code copies and configs are what the package writes ------------------------------------------------

REFRESH_SCRIPT = REPO_ROOT / "scripts" / "refresh_shipped_models.py"
_spec = importlib.util.spec_from_file_location("refresh_shipped_models", REFRESH_SCRIPT)
refresh_shipped_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refresh_shipped_models)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_code_and_configs_match_the_package(name):
    changes = refresh_shipped_models.refresh_folder(MODELS / name, check=True)
    assert not changes, (
        f"models/{name} has drifted from the package ({changes}): run python scripts/refresh_shipped_models.py"
    )


def test_refresh_keeps_weights_and_cards_and_fixes_drift(tmp_path):
    folder = tmp_path / "vqvae-cifar10"
    shutil.copytree(MODELS / "vqvae-cifar10", folder)
    kept = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file() and path.suffix != ".py"}
    kept.pop("config.json")
    (folder / "quantizer.py").write_text("# an old copy\n")
    (folder / "stale_module.py").write_text("# no longer written by the package\n")
    assert refresh_shipped_models.refresh_folder(folder, check=True) == {
        "quantizer.py": "changed",
        "stale_module.py": "removed",
    }
    refresh_shipped_models.refresh_folder(folder)
    assert (folder / "quantizer.py").read_bytes() == (REPO_ROOT / "hf_vqvae" / "quantizer.py").read_bytes()
    assert not (folder / "stale_module.py").exists()
    assert {name: (folder / name).read_bytes() for name in kept} == kept  # weights bit-identical, card untouched
    assert refresh_shipped_models.refresh_folder(folder, check=True) == {}


# --- a user without hf_vqvae runs the folders' own code ----------------------------------------------------------------


@pytest.mark.slow
def test_shipped_folders_run_with_their_own_code(tmp_path):
    # A fresh process where `import hf_vqvae` fails: transformers' Auto classes with `trust_remote_code=True` run the
    # folders' code copies, which must give the package's outputs (and so the pinned values).
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "shipped_models.py")],
        input=json.dumps(VQVAE_CIFAR10_CODES),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout)
    assert sorted(remote) == sorted(SHIPPED)
    for name in SHIPPED:
        outputs = {key: torch.tensor(value) for key, value in remote[name].items()}
        assert_pinned(name, outputs, "trust_remote_code")
        for key, expected in package_outputs(name).items():
            torch.testing.assert_close(
                outputs[key].to(expected.dtype), expected, atol=1e-5, rtol=0, msg=f"models/{name}: {key}"
            )


# --- model cards carry no local paths ------------------------------------------------------------------------------------

# `/work/...`, `../shared`, `~/...`, `/home/...`: paths of the machine a model was trained on. `../<folder>` may name a
# sibling shipped folder (the prior's VQ-VAE).
LOCAL_PATH = re.compile(
    r"/work/|~/|(?<![\w.:/-])/(?:home|tmp|root|mnt|Users|scratch)/|\.\./(?!(?:{})(?![\w.-]))".format("|".join(SHIPPED))
)
HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@pytest.mark.parametrize("name", SHIPPED)
def test_model_card_has_no_local_paths(name):
    card = (MODELS / name / "README.md").read_text()
    assert card.startswith("---\n"), f"models/{name}/README.md: no YAML front matter"
    front_matter = card.split("---\n", 2)[1]
    lines = [f"{number}: {line}" for number, line in enumerate(card.splitlines(), 1) if LOCAL_PATH.search(line)]
    assert not lines, f"models/{name}/README.md names local paths:\n" + "\n".join(lines)
    in_datasets = False
    for line in front_matter.splitlines():
        if not line.startswith("- "):
            in_datasets = line.rstrip() == "datasets:"
        elif in_datasets:
            dataset = line[2:].strip()
            assert HUB_DATASET_ID.match(dataset), (
                f"models/{name}: `datasets` entry {dataset!r} is not a Hub dataset id"
            )
