"""The README and the pages under docs/, walked as a new user would: every fenced shell command
and Python block runs, in order (the README first, then the pages by name), in a fresh folder
that holds what the README assumes (the quickstart's data and run, made small here; `DIR`, a
small image folder of your own; `weights.safetensors`).

A block the test cannot run is marked in its page, on the line just before it, with
``<!-- readme-test: skip (REASON) -->``, where REASON names a GPU, the network or a run longer
than a minute; any other block that fails fails this test. Shell blocks run as bash scripts;
plain blocks run only their ``$ ``-prompted commands (the rest is printed output).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The README first: the pages may use what its commands made (runs/photos, ...).
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300  # a newcomer's first screenful of attention (issue 25); the rest is in docs/
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
MARKER = re.compile(r"<!-- readme-test: skip \((?P<why>[^)]+)\) -->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
SKIP_REASONS = ("gpu", "network", "longer than a minute")
# Per block. On 2 idle cores the longest (30 epochs of configs/photos_cpu.yaml on DIR) takes
# about a minute; on a 2-core machine shared with three other test suites it took over 4.
TIMEOUT_S = 900


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str  # "bash", "python", "" (plain)
    body: str
    skip: str | None  # the marker's reason
    page: str = "README.md"  # relative to the repository root

    @property
    def commands(self) -> str | None:
        """What to run: the shell script, the Python code, or a plain block's prompted lines."""
        if self.lang in ("bash", "sh", "shell", "python"):
            return self.body
        lines, keep = [], False
        for line in self.body.splitlines():
            if line.startswith("$ "):
                lines.append(line[2:])
                keep = line.endswith("\\")
            elif keep:
                lines.append(line)
                keep = line.endswith("\\")
        return "\n".join(lines) or None


def readme_blocks(text: str, page: str = "README.md") -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        marker = MARKER.search(lines[i - 1]) if i > 0 else None
        blocks.append(Block(i + 1, match["lang"], "\n".join(lines[i + 1:end]) + "\n",
                            marker["why"] if marker else None, page))
        i = end + 1
    return blocks


def page_blocks() -> list[Block]:
    return [block for path in PAGES
            for block in readme_blocks(path.read_text(), str(path.relative_to(ROOT)))]


def runnable() -> list[Block]:
    return [b for b in page_blocks() if b.commands]


def test_the_readme_parser_finds_blocks_and_markers():
    text = ("a\n```bash\necho hi\n```\n<!-- readme-test: skip (network) -->\n```bash\npip x\n```\n"
            "```\n$ vit predict a \\\n      b\nPATH  PREDICTIONS\n```\n```python\nprint(1)\n```\n")
    blocks = readme_blocks(text)
    assert [(b.lang, b.skip) for b in blocks] == [("bash", None), ("bash", "network"), ("", None),
                                                  ("python", None)]
    assert blocks[2].commands == "vit predict a \\\n      b"


def skip_marker_problems(text: str, page: str) -> tuple[int, list[str]]:
    """(markers checked, problems): every line of the page that mentions ``readme-test`` must be
    a well-formed marker on the line just above a fenced block, with an accepted reason. A
    marker that does not parse, or that stands elsewhere, would skip nothing without a word."""
    marked = {block.line - 1: block for block in readme_blocks(text, page) if block.skip}
    checked, problems = 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if "readme-test" not in line:
            continue
        checked += 1
        block = marked.get(number)
        if block is None:
            problems.append(f"{page} line {number}: not a skip marker just above a fenced "
                            f"block: {line.strip()}")
        elif not any(reason in block.skip for reason in SKIP_REASONS):
            problems.append(f"{page} line {number}: skip reason {block.skip!r} is none of "
                            f"{SKIP_REASONS}")
    return checked, problems


def test_the_marker_check_finds_every_kind_of_bad_marker():
    text = ("<!-- readme-test: skip (network) -->\n```bash\npip x\n```\n"
            "<!-- readme-test: skip (too slow) -->\n```bash\nvit train\n```\n"
            "<!-- readme-test: skip network -->\n```bash\nvit push\n```\n"
            "<!-- readme-test: skip (gpu) -->\n\n```bash\nvit train --device cuda\n```\n"
            "```bash\necho fine\n```\n")
    checked, problems = skip_marker_problems(text, "page.md")
    assert checked == 4
    assert problems == [
        "page.md line 5: skip reason 'too slow' is none of "
        "('gpu', 'network', 'longer than a minute')",
        "page.md line 9: not a skip marker just above a fenced block: "
        "<!-- readme-test: skip network -->",
        "page.md line 13: not a skip marker just above a fenced block: "
        "<!-- readme-test: skip (gpu) -->",
    ]
    assert [b.skip for b in readme_blocks(text)] == ["network", "too slow", None, None, None]


def test_every_skip_marker_of_every_page_gives_an_accepted_reason():
    assert PAGES[0] == README and len(PAGES) > 1  # the README and the pages of docs/
    problems, checked, mentions = [], 0, 0
    for path in PAGES:
        text = path.read_text()
        page_checked, page_problems = skip_marker_problems(text, str(path.relative_to(ROOT)))
        checked, problems = checked + page_checked, problems + page_problems
        mentions += text.count("readme-test")
    assert checked == mentions  # every marker of every page was looked at
    assert problems == []


def test_the_readme_fits_a_screenful_and_links_the_docs():
    """Issue 25: the README is at most ~300 lines; the rest lives in docs/ and is linked."""
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    for page in ("training", "explanations", "scaling", "sharing", "troubleshooting"):
        assert f"(docs/{page}.md" in README.read_text(), f"the README does not link docs/{page}.md"


def test_every_relative_link_names_a_file_that_exists():
    for path in PAGES:
        for match in LINK.finditer(path.read_text()):
            target = match["target"].split("#")[0]
            if not target or "://" in target or target.startswith("mailto:"):
                continue
            assert (path.parent / target).exists(), \
                f"{path.relative_to(ROOT)} links {match['target']}, which does not exist"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder where the README's paths exist: the quickstart's data (full size, for the file
    names the README uses) and a 1-epoch run of a tiny model in runs/quickstart, DIR (a small
    train/val/test folder), labels.csv (DIR's images as a label file with a split column),
    weights.safetensors and RUN (= runs/quickstart)."""
    from helpers.images import make_folder

    from vit.config import config_from_dict
    from vit.data.synthetic import make_shapes_dataset
    from vit.inference.export import export_checkpoint
    from vit.training.quickstart import QUICKSTART, SHAPES_PER_CLASS, SHAPES_VAL_FRACTION
    from vit.training.trainer import train

    ws = tmp_path_factory.mktemp("readme")
    for name in ("train.py", "evaluate.py", "configs", "benchmarks"):
        (ws / name).symlink_to(ROOT / name)
    make_shapes_dataset(ws / "data" / "shapes", num_per_class=SHAPES_PER_CLASS, img_size=48,
                        seed=0, val_fraction=SHAPES_VAL_FRACTION)
    cfg = config_from_dict({**QUICKSTART, "model": {**QUICKSTART["model"], "embed_dim": 32,
                                                    "depth": 2, "num_heads": 2}})
    cfg.data.root, cfg.train.output = str(ws / "data" / "shapes"), str(ws / "runs" / "quickstart")
    cfg.train.epochs, cfg.train.device, cfg.data.workers = 1, "cpu", 0
    train(cfg, show_progress=False)
    for split, per_class in (("train", 8), ("val", 3), ("test", 3)):
        make_folder(ws / "DIR" / split, classes=("daisy", "roses", "tulips"),
                    per_class=per_class, size=24)
    rows = [f"{p.relative_to(ws)},{p.parent.name},{p.parent.parent.name}"
            for p in sorted((ws / "DIR").glob("*/*/*.png"))]
    (ws / "labels.csv").write_text("\n".join(["path,label,split", *rows]) + "\n")
    export_checkpoint(ws / "runs" / "quickstart" / "best.pt", ws / "weights.safetensors")
    (ws / "RUN").symlink_to(ws / "runs" / "quickstart")
    (ws / "assets").mkdir()  # where the README draws figures (--grid assets/...)
    return ws


def _environment() -> dict[str, str]:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
@pytest.mark.parametrize("block", runnable(), ids=lambda b: f"{b.page}:line{b.line}")
def test_readme_block_runs(block, workspace):
    if block.skip is not None:
        pytest.skip(f"{block.page} line {block.line}: {block.skip}")
    if block.lang == "python":
        argv = [sys.executable, "-c", block.commands]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", block.commands]
    proc = subprocess.run(argv, cwd=workspace, env=_environment(), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (f"{block.page} line {block.line} failed ({proc.returncode}):\n"
                                  f"{block.commands}\n--- stderr ---\n{proc.stderr[-3000:]}")
