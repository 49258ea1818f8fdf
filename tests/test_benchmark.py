"""Smoke tests of `scripts/benchmark.py`: its `--quick` mode on tiny sizes, so that the script cannot rot.

Only the quantizer, prior and prior_sampling sections run here (a few seconds); the timings themselves are not checked.
"""

import json
import sys

import pytest
import torch
from conftest import REPO_ROOT


# `scripts/benchmark.py` imports its sections from `scripts/benchmarks/`, as `python scripts/benchmark.py` finds them.
if str(REPO_ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
import benchmark  # noqa: E402
from benchmarks import harness  # noqa: E402


OPTIONAL = ("diffusers", "vector_quantize_pytorch")


def run_quick(output, *extra):
    """`python scripts/benchmark.py --quick ...` in this process, on one thread; returns the sections."""
    threads = torch.get_num_threads()
    try:
        args = benchmark.parse_args(["--quick", "--threads", "1", "--repeats", "2", "--output", str(output), *extra])
        return benchmark.main(args)
    finally:
        torch.set_num_threads(threads)


PRIOR_SAMPLING = "Prior sampling: gated PixelCNN and transformer priors"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    output, rows = folder / "BENCHMARKS.md", folder / "prior_sampling.json"
    sections = run_quick(output, "--only", "quantizer,prior,prior_sampling", "--prior_sampling_json", str(rows))
    return output.read_text(), {section.title: section for section in sections}, json.loads(rows.read_text())


def column(section, name: str) -> list[str]:
    index = section.columns.index(name)
    return [row[index] for row in section.rows]


def test_quick_run_writes_a_report_with_tables(quick_run):
    text, sections, _ = quick_run
    assert set(sections) == {"Quantizer layer", "Prior sampling", PRIOR_SAMPLING}
    assert text.startswith("# hf_vqvae benchmarks")
    assert "**QUICK MODE**" in text
    for item in (
        "- Date:",
        "- Command: `python scripts/benchmark.py --quick",
        "- Versions:",
        "torch 2.",
        "- Machine:",
        "- Load from other processes during the whole run:",
    ):
        assert item in text, item
    assert "## Quantizer layer" in text and "## Prior sampling" in text and f"## {PRIOR_SAMPLING}" in text
    assert "## Whole model" not in text and "## Tokenization" not in text
    for section in sections.values():
        # One Markdown table per section: header, separator, one line per row, all with the same number of cells.
        table = harness.markdown_table(section.columns, section.rows)
        assert table in text
        assert all(len(row) == len(section.columns) for row in section.rows)
        assert section.rows and "result" in section.columns
        assert set(column(section, "result")) <= {"", "PASS", "**FAIL**"}
        assert section.cpu is not None and section.cpu.wall_seconds > 0


def test_quantizer_rows_time_ours_against_the_bare_matmul(quick_run):
    quantizer = quick_run[1]["Quantizer layer"]
    names = column(quantizer, "implementation")
    workloads = set(zip(column(quantizer, "workload"), names))
    assert ("inference", "bare matmul `x @ E.T`") in workloads
    for workload in ("inference", "training, loss rule", "training, EMA rule"):
        assert any(w == workload and n.startswith("hf_vqvae") for w, n in workloads), workload
    for row in quantizer.rows:
        assert float(row[quantizer.columns.index("median (ms)")].replace(",", "")) > 0
    # On seeded standard-normal data there are no near-ties: ours matches the float64 reference exactly.
    ours_codes = [codes for name, codes in zip(names, column(quantizer, "codes != ours")) if name.startswith("hf_")]
    assert ours_codes and set(ours_codes) == {"0 vs float64"}


def test_prior_rows_compare_cached_uncached_and_gpt2(quick_run):
    prior = quick_run[1]["Prior sampling"]
    assert column(prior, "sampler") == ["ours, cached", "ours, uncached", "GPT-2 `generate`, cached"]
    assert all(float(value.replace(",", "")) > 0 for value in column(prior, "tokens/s"))
    assert any("in 0 of" in note for note in prior.notes)  # greedy: cache and no cache choose the same codes


def test_prior_sampling_rows_time_both_priors_and_check_the_cached_sampler(quick_run):
    _, sections, result = quick_run
    section = sections[PRIOR_SAMPLING]
    assert column(section, "sampler") == ["pixelcnn, naive", "pixelcnn, cached", "transformer, kv cache"]
    assert column(section, "batch") == ["2"] * 3  # the quick sizes' batch
    assert column(section, "same codes as naive") == ["", "yes", ""]
    assert column(section, "x naive PixelCNN")[0] == "1.0x"
    # The JSON holds the same rows, with the machine (CPU model included) and the command that made them.
    assert [row["sampler"] for row in result["rows"]] == column(section, "sampler")
    assert [row["same_codes_as_naive"] for row in result["rows"]] == [None, True, None]
    for row in result["rows"]:
        assert row["codes_per_second"] == pytest.approx(2 * 12 / row["median_seconds"])  # batch 2, 3x4 grids
        assert len(row["samples_seconds"]) == 2 and row["batch"] == 2
    assert result["machine"]["cpu"] == harness.cpu_model() and result["machine"]["torch_threads"] == 1
    assert result["command"].startswith("python scripts/benchmark.py --quick") and result["quick"]
    assert result["load"]["wall_seconds"] > 0 and result["load"]["own_cpu_seconds"] > 0


def test_update_replaces_only_the_sections_run(tmp_path):
    old = "\n".join(["# hf_vqvae benchmarks", "", "- Date: old", "", "## A", "", "old a", "", "## B", "", "old b", ""])
    new = "\n".join(
        ["# hf_vqvae benchmarks", "", "> **busy**", "- Date: new", "", "## B", "", "new b", "", "## C", "c"]
    )
    updated = harness.update_report(old, new)
    assert updated.split("## B")[0] == "# hf_vqvae benchmarks\n\n- Date: old\n\n## A\n\nold a\n\n"
    assert "old b" not in updated and updated.index("## B") < updated.index("## C")
    section_b = updated.split("## B")[1].split("## C")[0]
    assert "later run than the header's" in section_b and "- Date: new" in section_b
    assert "> **busy**" in section_b and "new b" in section_b
    # Through the script: a quick --update run of one section keeps the sections of an earlier run.
    output = tmp_path / "BENCHMARKS.md"
    run_quick(output, "--only", "quantizer")
    first = output.read_text()
    run_quick(output, "--only", "prior", "--update")
    text = output.read_text()
    assert text.startswith(first.split("## Quantizer layer")[0])  # the first run's header
    assert text.split("## Prior sampling")[0].strip() == first.strip()  # its section too, unchanged
    assert "Measured in a later run" in text.split("## Prior sampling")[1]


def test_optional_libraries_choose_the_same_codes(quick_run):
    for module in OPTIONAL:
        pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[bench]')")
    quantizer = quick_run[1]["Quantizer layer"]
    others = {(row[0], row[1]): row for row in quantizer.rows if not row[1].startswith(("hf_vqvae", "bare"))}
    assert {name for _, name in others} == {"diffusers `VectorQuantizer`", "vector-quantize-pytorch `VectorQuantize`"}
    assert len(others) == 5  # diffusers: inference and loss rule; vector-quantize-pytorch: also the EMA rule
    codes = quantizer.columns.index("codes != ours")
    assert {row[codes] for row in others.values()} == {"0"}
    assert all(row[quantizer.columns.index("ours faster by")].endswith("x") for row in others.values())


def test_missing_optional_library_is_a_note_not_an_error(tmp_path, monkeypatch):
    # `None` in sys.modules makes `import` raise ImportError, as if the package were not installed.
    for name in list(sys.modules):
        if name.split(".")[0] in OPTIONAL:
            monkeypatch.setitem(sys.modules, name, None)
    for name in OPTIONAL:
        monkeypatch.setitem(sys.modules, name, None)
    output = tmp_path / "BENCHMARKS.md"
    (section,) = run_quick(output, "--only", "quantizer")
    assert all(row[1].startswith(("hf_vqvae", "bare")) for row in section.rows)
    text = output.read_text()
    for package in ("`diffusers` is not installed", "`vector-quantize-pytorch` is not installed"):
        assert package in text
    assert 'pip install -e ".[bench]"' in text


def test_parse_args_checks_the_sections():
    assert benchmark.parse_args(["--only", "prior,quantizer"]).sections == ["quantizer", "prior"]
    with pytest.raises(ValueError, match="`--only` takes names from"):
        benchmark.parse_args(["--only", "quantiser"])
    with pytest.raises(ValueError, match="`--repeats` must be >= 1"):
        benchmark.parse_args(["--repeats", "0"])
    assert benchmark.parse_args(["--only", "prior_sampling"]).prior_sampling_json.endswith(
        "results/prior_sampling.json"
    )
