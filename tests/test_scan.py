import os

import pytest

from loader.convert.scan import scan
from loader.errors import PackError


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_classes_sorted_items_sorted_nested_counted(tmp_path):
    for rel in ["zebra/1.jpg", "ant/b.jpg", "ant/a.jpg", "ant/sub/deeper/c.png", "mole/notes.txt"]:
        touch(tmp_path / rel)
    touch(tmp_path / "README.txt")  # directly in SRC: belongs to no class
    classes, items = scan(tmp_path)
    assert classes == ["ant", "mole", "zebra"]
    assert items == [("ant/a.jpg", 0), ("ant/b.jpg", 0), ("ant/sub/deeper/c.png", 0),
                     ("mole/notes.txt", 1), ("zebra/1.jpg", 2)]


def test_hidden_files_and_folders_ignored(tmp_path):
    touch(tmp_path / "cat" / "1.jpg")
    touch(tmp_path / "cat" / ".DS_Store")
    touch(tmp_path / "cat" / ".thumbs" / "1.jpg")
    touch(tmp_path / ".git" / "objects" / "x")
    assert scan(tmp_path) == (["cat"], [("cat/1.jpg", 0)])


def test_empty_class_keeps_its_label(tmp_path):
    # Labels must match torchvision's ImageFolder class_to_idx (sorted folder names).
    touch(tmp_path / "a" / "1.jpg")
    (tmp_path / "b").mkdir()
    touch(tmp_path / "c" / "1.jpg")
    assert scan(tmp_path) == (["a", "b", "c"], [("a/1.jpg", 0), ("c/1.jpg", 2)])


def test_symlink_loop_does_not_hang(tmp_path):
    touch(tmp_path / "cat" / "1.jpg")
    os.symlink(tmp_path / "cat", tmp_path / "cat" / "loop")
    assert scan(tmp_path) == (["cat"], [("cat/1.jpg", 0)])


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("file", "is not a folder"),
    ("no_classes", "has no class folders"),
    ("empty_classes", "no files in them"),
])
def test_scan_errors(tmp_path, case, expected):
    src = tmp_path / "src"
    if case == "file":
        touch(src)
    elif case == "no_classes":
        touch(src / "loose.jpg")
    elif case == "empty_classes":
        (src / "a").mkdir(parents=True)
        touch(src / "b" / ".hidden")
    with pytest.raises(PackError, match=expected) as e:
        scan(src)
    assert str(src) in str(e.value)
