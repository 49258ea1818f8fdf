"""The README's quick start runs as written, and prints what its comments say."""

import contextlib
import io
import re

from conftest import REPO_ROOT


def quick_start_code() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the quick start must hold exactly one python block"
    return blocks[0]


def test_quick_start_runs_and_prints_what_it_says():
    code = quick_start_code()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    printed = stdout.getvalue().splitlines()
    # Each `print(...)  # expected` comment in the README is what that line prints.
    expected = [m.group(1) for m in re.finditer(r"^print\(.*\)[ \t]+#[ \t]*(.+)$", code, flags=re.M)]
    assert expected, "the quick start should show its expected outputs"
    for line in expected:
        assert line in printed, f"README promises {line!r}; printed {printed}"
    assert "commitment_loss" in printed[1] and "codebook_loss" in printed[1]
