"""Every example in the README runs, as written, on a small generated dataset.

The shell blocks' ``loader pack | info | verify`` lines run for real, in order, in a folder laid
out as the README assumes (``photos/``, ``train/`` + ``train.csv``, ``val/``, ``unlabeled/``);
``loader bench`` and ``loader advise`` lines (minutes of measuring each) are parsed by the real
CLI parser, which must accept them without a deprecation note; the Python blocks then run
against the packs the shell lines made (the "Before" half of the swap needs torchvision, which
is not a dependency: the "After" half runs, one training step per epoch).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the README, in order."""
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(README.read_text())]


def shell_lines() -> list[list[str]]:
    """The ``loader ...`` command lines of the README's unlabelled / bash blocks, comments dropped."""
    out = []
    for lang, text in blocks():
        if lang not in ("", "bash", "sh"):
            continue
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["loader"]:
                out.append(words[1:])
    return out


def make_tree(root: Path, per_class: int = 90) -> None:
    """photos/ and val/ (3 class folders), train/ + train.csv, unlabeled/: small distinct JPEGs."""
    classes = ["cat", "dog", "owl"]
    rows = ["path,label"]
    for c, name in enumerate(classes):
        for i in range(per_class):
            img = Image.new("RGB", (40 + i % 7, 32 + c), (37 * i % 256, 80 * c, 120))
            for folder in ("photos", "val"):
                (root / folder / name).mkdir(parents=True, exist_ok=True)
                img.save(root / folder / name / f"{i}.jpg", quality=90)
            (root / "train").mkdir(exist_ok=True)
            img.save(root / "train" / f"{name}{i}.jpg", quality=90)
            rows.append(f"{name}{i}.jpg,{name}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "unlabeled").mkdir()
    for i in range(4):
        Image.new("RGB", (30, 30 + i), (60 * i, 10, 10)).save(root / "unlabeled" / f"{i}.jpg")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    make_tree(root)
    return root


def test_the_readme_has_the_examples_this_test_runs():
    commands = [w[0] for w in shell_lines()]
    assert commands.count("pack") == 4 and {"info", "verify", "bench", "advise"} <= set(commands)
    assert sum(lang == "python" for lang, _ in blocks()) == 2


def test_shell_examples_run(tree, monkeypatch):
    from loader.cli import build_parser, main

    monkeypatch.chdir(tree)
    for words in shell_lines():
        err = io.StringIO()
        if words[0] in ("bench", "advise"):
            with contextlib.redirect_stderr(err):
                args = build_parser().parse_args(words)
            assert args.command == words[0] and err.getvalue() == "", (words, err.getvalue())
            continue
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main(words)
        assert rc == 0, (words, err.getvalue()[-2000:])
        assert "deprecated" not in err.getvalue(), (words, err.getvalue())
    for dst in ("photos.packed", "train.packed", "val.packed", "unlabeled.packed"):
        assert (tree / dst / "manifest.json").is_file(), dst


def test_python_examples_run(tree, monkeypatch):
    import torch

    import loader

    if not (tree / "val.packed").exists():
        test_shell_examples_run(tree, monkeypatch)
    monkeypatch.chdir(tree)
    monkeypatch.syspath_prepend(str(ROOT))          # `from scripts.mixup_cutmix import ...`
    swap, labels = [text for lang, text in blocks() if lang == "python"]
    after = swap[swap.index("# After"):]
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3))
    seen = []

    def criterion(out, target):
        seen.append((tuple(out.shape), tuple(target.shape)))
        return torch.nn.functional.cross_entropy(out, target)

    ns = {"model": model, "criterion": criterion, "ckpt": None, "start_epoch": 0, "epochs": 1}
    exec(compile(after, "README.md (after)", "exec"), ns)
    assert seen == [((256, 3), (256,))]              # 270 records, batch 256, full batches only
    assert len(ns["val_loader"]) == 2 and ns["val_loader"].augment.eval_mode == "torchvision"

    ns2: dict = {"loader": loader}
    exec(compile(labels, "README.md (labels)", "exec"), ns2)
    images, soft = next(iter(ns2["train"]))
    assert images.shape == (256, 3, 224, 224) and soft.shape == (256, 1000)
    assert torch.allclose(soft.sum(1), torch.ones(256), atol=1e-5)
    ns2["train"].close()
    sys.modules.pop("scripts.mixup_cutmix", None)
