"""The demo app (`app.py`): its functions on the shipped models (fast), and the page in Chromium (slow).

The browser tests start `python app.py` on a free port and drive Debian's Chromium (`/usr/bin/chromium`, package
`chromium`) with Playwright; Playwright's own browser downloads are never used. Screenshots of each tab go to
`outputs/app/`. Run them with `RUN_SLOW=1 pytest tests/test_app.py`.
"""

import io
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported, as app.py does
gr = pytest.importorskip("gradio", reason="the demo app needs gradio: pip install -e '.[app]'")
sf = pytest.importorskip("soundfile", reason="the Audio tab reads clips with soundfile: pip install -e '.[app]'")

import app  # noqa: E402


REPO = Path(__file__).resolve().parent.parent
CAT = REPO / "examples" / "images" / "cifar10-test-000-cat.png"
NOISE = REPO / "examples" / "images" / "noise.png"
DIGIT = REPO / "models" / "vqvae-fsdd" / "samples" / "original-1.wav"
SCREENSHOTS = REPO / "outputs" / "app"
CHROMIUM = "/usr/bin/chromium"
# The flags a root, offline machine needs: no sandbox, and no background connections to Google's hosts.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A microphone that plays a beep, allowed without asking: the Audio tab's recording is tested too.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------- Tokenize


def test_tokenize_example_codes_ids_and_psnr():
    result = app.tokenize_image(str(CAT))
    codes = result.codes
    assert codes.shape == (8, 8) and codes.dtype == np.int64 and codes.min() >= 0 and codes.max() < 512
    # [boi] the codes row by row [eoi], with the image tokenizer's layout (code_offset 0, K = 512).
    assert result.token_ids == [512, *codes.flatten().tolist(), 513]
    assert result.original.size == result.reconstruction.size == (32, 32)
    # The reported PSNR is the PSNR of the two pictures shown (up to their rounding to 8 bits).
    original = np.asarray(result.original, dtype=np.float64) / 255
    decoded = np.asarray(result.reconstruction, dtype=np.float64) / 255
    assert abs(result.psnr - (-10 * math.log10(((original - decoded) ** 2).mean()))) < 0.1
    assert 15 < result.psnr < 40  # the shipped model: 26.0 dB on average over the CIFAR-10 test set


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_tokenize_other_image_modes(mode):
    rgb = Image.open(CAT).convert("RGB").resize((48, 40))
    image = rgb.convert("RGBA") if mode == "RGBA" else rgb.convert("L" if mode == "I;16" else mode)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    result = app.tokenize_image(png_bytes(image))
    assert result.codes.shape == (8, 8) and math.isfinite(result.psnr)
    if mode == "L":  # gray in, gray out: the three channels of the model input are equal
        pixels = np.asarray(result.original)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


@pytest.mark.parametrize(
    "image, message",
    [
        (None, "No image: upload one"),
        (b"", "empty"),
        (b"this is not an image", "could not be opened"),
        (png_bytes(Image.new("RGB", (32, 32)))[:60], "truncated"),
    ],
)
def test_tokenize_bad_input_is_a_clear_error(image, message):
    with pytest.raises(ValueError, match=message):
        app.tokenize_image(image)
    # The page shows the same message, as gr.Error (a modal), not a stack trace.
    with pytest.raises(gr.Error, match=message):
        app.tokenize_handler(image)


def test_tokenize_huge_image_is_refused_before_decoding(monkeypatch):
    # Pillow's decompression-bomb limit, lowered so that a small file stands for a huge one.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(gr.Error, match="Refusing to decode the image.*4096 pixels"):
        app.tokenize_handler(png_bytes(Image.new("RGB", (64, 64))))


def test_decode_code_grid_edits():
    result = app.tokenize_image(str(CAT))
    unchanged, note = app.decode_code_grid(result.codes.tolist(), result.codes)
    assert note.endswith("0 of 64 codes differ from the image's own.")
    assert np.array_equal(np.asarray(unchanged), np.asarray(result.reconstruction))
    edited = result.codes.copy()
    edited[0, 0] = (edited[0, 0] + 1) % 512
    # The page's grid may hold strings or floats ("17", 17.0): both are codes.
    picture, note = app.decode_code_grid([[str(c) for c in row] for row in edited.tolist()], result.codes)
    assert note.endswith("1 of 64 codes differ from the image's own.")
    changed = np.abs(np.asarray(picture, dtype=int) - np.asarray(unchanged, dtype=int)).sum(-1)  # (32, 32)
    assert changed[:4, :4].sum() > 0  # the edited code's patch changed


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda g: g[:7], "must be 8 rows of 8 codes; got 7 rows"),
        (lambda g: [row[:5] for row in g], r"got 8 rows of \[5\] cells"),
        (lambda g: [["abc", *g[0][1:]], *g[1:]], "Row 1, column 1 holds 'abc'"),
        (
            lambda g: [g[0], [*g[1][:2], 512, *g[1][3:]], *g[2:]],
            r"Row 2, column 3 holds 512; a code is an integer in \[0, 512\)",
        ),
        (lambda g: [g[0], g[1], [-1, *g[2][1:]], *g[3:]], "Row 3, column 1 holds -1"),
        (lambda g: [[1.5, *g[0][1:]], *g[1:]], "holds 1.5"),
    ],
)
def test_decode_code_grid_bad_edits(edit, message):
    grid = np.zeros((8, 8), dtype=int).tolist()
    with pytest.raises(ValueError, match=message):
        app.decode_code_grid(edit(grid))


def test_decode_before_tokenize_is_a_clear_error():
    with pytest.raises(gr.Error, match="Tokenize an image first"):
        app.decode_handler(np.zeros((8, 8), dtype=int).tolist(), None)


# ---------------------------------------------------------------------------------------------------------- Generate


def test_list_priors_finds_every_prior_folder(tmp_path):
    # A new prior appears in the Generate tab by being a folder with a config and a vqvae_reference.json.
    for name in ("prior-cifar10", "vqvae-cifar10"):
        (tmp_path / name).symlink_to(REPO / "models" / name)
    (tmp_path / "another-prior").symlink_to(REPO / "models" / "prior-cifar10")
    unknown = tmp_path / "future-prior"  # a prior type this install cannot load: left out, with a warning
    unknown.mkdir()
    (unknown / "config.json").write_text('{"model_type": "hf_vqvae_prior_from_the_future"}')
    (unknown / "vqvae_reference.json").write_text("{}")
    assert app.list_priors(tmp_path) == ["another-prior", "prior-cifar10"]
    assert app.list_priors() == [
        p.name for p in sorted((REPO / "models").iterdir()) if (p / "vqvae_reference.json").is_file()
    ]
    assert app.class_choices("prior-cifar10")[:3] == ["airplane", "automobile", "bird"]
    assert app.class_choices("prior-cifar10")[-1] == app.UNCONDITIONAL


def test_generate_samples_is_seeded_and_reports_progress():
    calls = []
    images, seconds = app.generate_samples(
        "prior-cifar10", "ship", guidance_scale=2.0, seed=3, num_samples=1, progress=lambda f, desc: calls.append(f)
    )
    assert len(images) == 1 and images[0].size == (32, 32) and seconds > 0
    assert calls == [0.0, 1.0]
    again, _ = app.generate_samples("prior-cifar10", "ship", guidance_scale=2.0, seed=3, num_samples=1)
    assert np.array_equal(np.asarray(images[0]), np.asarray(again[0]))
    other, _ = app.generate_samples("prior-cifar10", app.UNCONDITIONAL, guidance_scale=2.0, seed=4, num_samples=1)
    assert not np.array_equal(np.asarray(images[0]), np.asarray(other[0]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prior_name": None}, "Pick a prior"),
        ({"class_name": "unicorn"}, "Unknown class name 'unicorn'"),
        ({"num_samples": 0}, r"number of samples must be a whole number in \[1, 16\]"),
        ({"num_samples": 17}, r"in \[1, 16\]"),
        ({"seed": -1}, "seed must be a whole number"),
        ({"seed": None}, "seed must be a whole number"),
        ({"guidance_scale": 0}, "guidance scale must lie in"),
    ],
)
def test_generate_bad_settings(kwargs, message):
    settings = {"prior_name": "prior-cifar10", "class_name": "cat", "guidance_scale": 1.0, "seed": 0, "num_samples": 1}
    with pytest.raises(ValueError, match=message):
        app.generate_samples(**{**settings, **kwargs})


# ---------------------------------------------------------------------------------------------------------- Anomaly


def test_score_anomaly_ranks_noise_above_a_cifar_image():
    normal = app.score_anomaly(str(CAT))
    noise = app.score_anomaly(str(NOISE))
    assert noise.scores["combined_score"] > normal.scores["combined_score"]
    assert noise.percentile == 100.0 and normal.percentile < 100.0
    assert noise.scores["prior_nll"] is None  # no prior chosen
    assert noise.heatmap.size == (256, 256)
    assert "200 images of the test split" in noise.description


def test_score_anomaly_with_the_prior():
    result = app.score_anomaly(str(NOISE), "prior-cifar10", "cat", heatmap="prior_nll")
    assert result.scores["prior_nll"] > 0 and result.percentile == 100.0
    assert "'cat' images" in result.description


@pytest.mark.parametrize(
    "args, message",
    [
        ((None, app.NO_PRIOR, None, "reconstruction_error"), "No image"),
        ((str(CAT), app.NO_PRIOR, None, "prior_nll"), "needs a prior"),
        ((str(CAT), "prior-cifar10", None, "reconstruction_error"), "class-conditional: pick the class"),
        ((str(CAT), app.NO_PRIOR, None, "sharpness"), "heat map must be one of"),
        ((b"GIF89a-but-not-really", app.NO_PRIOR, None, "reconstruction_error"), "could not be opened"),
    ],
)
def test_score_anomaly_bad_input(args, message):
    with pytest.raises(gr.Error, match=message):
        app.anomaly_handler(*args)


# ---------------------------------------------------------------------------------------------------------- Audio


def test_reconstruct_audio_shipped_digit():
    samples, rate = sf.read(DIGIT, dtype="float32")
    result = app.reconstruct_audio(str(DIGIT))
    assert rate == result.sampling_rate == 8000 and result.notes == []
    assert result.reconstruction.shape == samples.shape
    assert len(result.codes) == math.ceil(len(samples) / 64) and all(0 <= c < 512 for c in result.codes)
    assert result.snr > 0
    # The colour map: rows of 32 codes of 28 pixels, 74 codes -> 3 rows.
    assert result.code_map.size == (32 * 28, 3 * 28)


def test_reconstruct_audio_other_rate_and_stereo():
    samples, _ = sf.read(DIGIT, dtype="float32")
    from scipy.signal import resample_poly

    stereo = np.stack([resample_poly(samples, 2, 1)] * 2, axis=1)  # 16 kHz, two channels
    result = app.reconstruct_audio(wav_bytes(stereo, 16000))
    assert result.notes == [
        "The clip has 2 channels; they were averaged to mono.",
        "The clip was resampled from 16000 Hz to the model's 8000 Hz.",
    ]
    assert abs(len(result.reconstruction) - len(samples)) <= 1
    # Gradio's numpy form, (rate, int16 samples (time, channels)), works too.
    as_tuple = app.reconstruct_audio((8000, np.round(samples * 32767).astype(np.int16)))
    assert len(as_tuple.codes) == math.ceil(len(samples) / 64)


@pytest.mark.parametrize(
    "audio, message",
    [
        (None, "No audio: upload a clip"),
        (b"", "empty"),
        (b"RIFF not really a wave file", "could not be decoded"),
        (wav_bytes(np.zeros(8000, dtype=np.float32), 8000), "silent"),
        (wav_bytes(np.zeros(0, dtype=np.float32), 8000), "empty"),
        (wav_bytes(np.full(31 * 8000, 0.1, dtype=np.float32), 8000), "lasts 31.0 s"),
        ((20, np.full(100, 0.5, dtype=np.float32)), "resampling by 400x is surely a wrong rate"),
    ],
)
def test_reconstruct_audio_bad_input(audio, message):
    with pytest.raises(gr.Error, match=message):
        app.audio_handler(audio)


# ---------------------------------------------------------------------------------------------------------- command


def test_build_demo_has_the_four_tabs():
    demo = app.build_demo()
    config = demo.get_config_file()
    tabs = [c["props"].get("label") for c in config["components"] if c["type"] == "tabitem"]
    assert tabs == ["Tokenize", "Generate", "Anomaly", "Audio"]
    priors = [c for c in config["components"] if c["props"].get("elem_id") == "prior"][0]
    assert [choice[0] for choice in priors["props"]["choices"]] == app.list_priors()
    # Subclassing a gradio component would make gradio write app.pyi into the repo (and fail `ruff check .`).
    assert not (REPO / "app.pyi").exists()


def test_parse_args():
    args = app.parse_args([])
    assert (args.host, args.port, args.num_threads) == ("127.0.0.1", 7860, 1)
    assert app.parse_args(["--port", "8080", "--host", "localhost"]).port == 8080
    with pytest.raises(SystemExit):
        app.parse_args(["--port", "70000"])


# ---------------------------------------------------------------------------------------------------------- browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """`python app.py` on a free local port, until the module's tests are done."""
    port = free_port()
    log = tempfile.TemporaryFile()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300  # importing gradio and torch takes 15 s on a busy machine
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.seek(0)
            pytest.fail(f"app.py did not serve {url}:\n{log.read().decode(errors='replace')[-3000:]}")
        time.sleep(1)
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def page(request, tmp_path_factory):
    """A Chromium page on the app, with a fresh profile; it records every URL the page asks for."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's package (`apt-get install chromium`; `RUN_SLOW=1 bash "
            "scripts/run.sh test` does it as root)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the `test` extra)")
    server = request.getfixturevalue("server")  # started only when there is a browser to drive it
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1280, "height": 1000},
            permissions=["microphone"],
        )
        context.set_default_timeout(120_000)
        page = context.new_page()
        page.requested = []
        page.on("request", lambda request: page.requested.append(request.url))
        page.goto(server)
        page.wait_for_selector("#tokenize-button")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        yield page
        context.close()


def open_tab(page, name: str):
    page.get_by_role("tab", name=name).click()


def upload(page, selector: str, path):
    """Put a file into an upload box (clearing what it holds first) and wait for it to arrive."""
    clear = page.locator(f"{selector} button[aria-label^='Remove'], {selector} button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator(f"{selector} input[type=file]").set_input_files(str(path))
    page.wait_for_timeout(1500)


def error_toast(page, text: str, screenshot: str | None = None) -> str:
    """Wait for an error modal that contains `text`; return its text and close it (after a screenshot if asked)."""
    toast = page.locator(".toast-body", has_text=text)
    toast.first.wait_for()
    message = toast.first.inner_text()
    if screenshot:
        page.screenshot(path=str(SCREENSHOTS / screenshot), full_page=True)
    page.locator(".toast-body .toast-close").first.click()
    return message


def wait_for_text(page, selector: str, text: str, timeout: float = 180_000) -> str:
    page.wait_for_function(
        "([selector, text]) => (document.querySelector(selector)?.innerText || '').includes(text)",
        arg=[selector, text],
        timeout=timeout,
    )
    return page.inner_text(selector)


def image_width(page, selector: str) -> int:
    """Natural width of the picture an image box shows, once it has loaded."""
    script = f"document.querySelector('{selector} img')?.naturalWidth || 0"
    page.wait_for_function(script, timeout=30_000)
    return page.evaluate(script)


def number(text: str, before: str) -> float:
    return float(text.split(before)[1].split()[0].rstrip("%:,"))


@pytest.mark.slow
def test_browser_tokenize(page, tmp_path):
    open_tab(page, "Tokenize")
    started = time.perf_counter()
    upload(page, "#tokenize-input", CAT)
    page.click("#tokenize-button")
    summary = wait_for_text(page, "#psnr", "PSNR")
    seconds = time.perf_counter() - started
    assert number(summary, "PSNR:") == pytest.approx(app.tokenize_image(str(CAT)).psnr, abs=0.01)
    assert image_width(page, "#tokenize-reconstruction") == 256 and image_width(page, "#tokenize-original") == 256
    ids = page.input_value("#token-ids textarea").split()
    assert len(ids) == 66 and ids[0] == "512" and ids[-1] == "513"
    page.screenshot(path=str(SCREENSHOTS / "tokenize.png"), full_page=True)

    # Edit one code of the grid (double-click the cell, type, Enter) and decode the edited grid.
    cell = page.locator("#code-grid [data-testid=cell-0-0]")
    old = int(cell.inner_text())
    cell.dblclick()
    page.keyboard.press("Control+A")
    page.keyboard.type(str((old + 1) % 512))
    page.keyboard.press("Enter")
    page.click("#decode-button")
    assert "1 of 64 codes differ" in wait_for_text(page, "#edit-note", "Decoded the grid")
    assert image_width(page, "#edited") == 256
    page.screenshot(path=str(SCREENSHOTS / "tokenize-edited.png"), full_page=True)

    # Bad uploads: a file that is no image, an image over Pillow's pixel limit; and no upload at all.
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"this is not an image")
    upload(page, "#tokenize-input", not_an_image)
    page.click("#tokenize-button")
    message = error_toast(page, "could not be opened", screenshot="tokenize-error.png")
    assert "(file 'notes.png') could not be opened" in message, message
    huge = tmp_path / "huge.png"
    Image.new("L", (10_000, 9_000)).save(huge)  # 90 million pixels, 90 kB of PNG
    upload(page, "#tokenize-input", huge)
    page.click("#tokenize-button")
    error_toast(page, "Refusing to decode the image")
    page.locator("#tokenize-input button[aria-label='Remove Image']").first.click()
    page.click("#tokenize-button")
    error_toast(page, "No image: upload one")
    print(f"\nTokenize in the browser: {seconds:.2f} s from the click to the PSNR (first call loads the model)")


@pytest.mark.slow
def test_browser_generate(page):
    open_tab(page, "Generate")
    # The first prior folder in name order is the default; pick the transformer prior this test's timings are for.
    page.locator("#prior input").click()
    page.get_by_role("option", name="prior-cifar10", exact=True).click()
    page.locator("#class input").click()
    page.get_by_role("option", name="ship", exact=True).click()
    started = time.perf_counter()
    page.click("#generate-button")
    # The progress indicator says which images are being sampled.
    page.wait_for_function("document.body.innerText.includes('Sampling images')")
    note = wait_for_text(page, "#generate-note", "samples from prior-cifar10")
    seconds = time.perf_counter() - started
    assert "8 'ship' samples" in note and "seed 0, guidance 2" in note
    assert image_width(page, "#samples") == 4 * 128 + 3 * 4  # 2 rows of 4 samples, 128 pixels each
    page.screenshot(path=str(SCREENSHOTS / "generate.png"), full_page=True)
    print(f"\nGenerate 8 samples in the browser: {seconds:.1f} s ({note})")


@pytest.mark.slow
def test_browser_anomaly(page):
    open_tab(page, "Anomaly")
    upload(page, "#anomaly-input", NOISE)
    started = time.perf_counter()
    page.click("#anomaly-button")
    summary = wait_for_text(page, "#anomaly-scores", "Combined score")
    seconds = time.perf_counter() - started
    expected = app.score_anomaly(str(NOISE))
    assert number(summary, "Combined score") == pytest.approx(expected.scores["combined_score"], abs=0.01)
    assert "higher than 100% of all 200 images" in summary
    assert image_width(page, "#heatmap") == 256
    page.screenshot(path=str(SCREENSHOTS / "anomaly.png"), full_page=True)
    # The class-conditional prior without a class: a message, not a trace.
    page.locator("#a-prior input").click()
    page.get_by_role("option", name="prior-cifar10", exact=True).click()
    page.click("#anomaly-button")
    error_toast(page, "pick the class the image should belong to", screenshot="anomaly-error.png")
    print(f"\nAnomaly in the browser: {seconds:.2f} s (first call fits the normal statistics)")


@pytest.mark.slow
def test_browser_audio(page, tmp_path):
    open_tab(page, "Audio")
    upload(page, "#audio-in", DIGIT)
    started = time.perf_counter()
    page.click("#audio-button")
    summary = wait_for_text(page, "#audio-summary", "SNR")
    seconds = time.perf_counter() - started
    assert number(summary, "SNR:") == pytest.approx(app.reconstruct_audio(str(DIGIT)).snr, abs=0.01)
    assert page.locator("#audio-out audio, #audio-out [data-testid^=waveform]").count() > 0
    assert len(page.input_value("#audio-codes textarea").split()) == 74
    page.screenshot(path=str(SCREENSHOTS / "audio.png"), full_page=True)
    # A clip at 16 kHz is resampled, with a warning; a silent clip is refused.
    samples, _ = sf.read(DIGIT, dtype="float32")
    other_rate = tmp_path / "digit-16k.wav"
    sf.write(other_rate, np.repeat(samples, 2), 16000)
    upload(page, "#audio-in", other_rate)
    page.click("#audio-button")
    page.locator(".toast-body", has_text="resampled from 16000 Hz").first.wait_for()
    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(8000, dtype=np.float32), 8000)
    upload(page, "#audio-in", silent)
    page.click("#audio-button")
    error_toast(page, "The clip is silent", screenshot="audio-error.png")
    # Record 2.5 s from the (fake) microphone: the browser's rate (44.1 or 48 kHz) is resampled to 8 kHz.
    page.locator("#audio-in button[aria-label='Clear']").first.click()
    page.click("#audio-in button[aria-label='Record audio']")
    page.locator("#audio-in button", has_text="Record").first.click()
    page.wait_for_timeout(2500)
    page.locator("#audio-in button", has_text="Stop").first.click()
    page.wait_for_timeout(1500)
    page.click("#audio-button")
    page.wait_for_function(
        "(document.querySelector('#audio-summary')?.innerText || '').match(/SNR: [-0-9.]+ dB\\s+\\((?!74 )[0-9]+ codes/)"
    )
    page.locator(".toast-body", has_text="resampled from").first.wait_for()
    page.screenshot(path=str(SCREENSHOTS / "audio-recorded.png"), full_page=True)
    print(f"\nAudio in the browser: {seconds:.2f} s")


@pytest.mark.slow
def test_browser_asked_only_the_app(page, server):
    """Every URL the page asked for, fonts and scripts included, was the app's own: nothing from the network."""
    host = server.split("/")[2]
    assert page.requested and all(url.split("/")[2] == host for url in page.requested if "://" in url), sorted(
        {url.split("/")[2] for url in page.requested if "://" in url}
    )
