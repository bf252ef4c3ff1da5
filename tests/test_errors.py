"""One error convention: every public exception lives in loader.errors and is importable from ``loader``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import loader
import loader.errors
from loader.errors import ArgumentError, DecodeError, LoaderError, ModelSpecError, one_line
from tests.conftest import REPO

# Exceptions that never leave the package: each is caught where it is raised and becomes
# something public (a skipped.tsv line, a DecodeError, ...). Named here, with where it ends.
INTERNAL = {
    "loader.convert.imagecheck.BadImage": "pack catches it: the file is skipped with its reason",
    "loader.format.recordguard.RecordRejected": "ImageLoader catches it and raises DecodeError",
}


def package_modules() -> list[str]:
    names = ["loader"]
    for info in pkgutil.walk_packages(loader.__path__, "loader."):
        if not info.name.endswith("__main__"):      # running them is their import
            names.append(info.name)
    return names


def test_all_is_sorted_and_every_name_resolves():
    assert loader.__all__ == sorted(loader.__all__)
    assert len(set(loader.__all__)) == len(loader.__all__)
    for name in loader.__all__:
        assert getattr(loader, name) is not None, name
    assert set(loader.__all__) <= set(dir(loader))


def test_every_exception_of_loader_errors_is_exported():
    defined = {name for name, obj in vars(loader.errors).items()
               if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == "loader.errors"}
    assert defined == {"ArgumentError", "ConcurrentEpochError", "DaliMissingError", "DatasetError", "DecodeError",
                       "LoaderError", "ModelSpecError", "PackError", "ServiceError"}
    assert defined <= set(loader.errors.__all__) and defined <= set(loader.__all__)
    for name in defined:
        assert getattr(loader, name) is getattr(loader.errors, name)


def test_no_public_exception_class_outside_loader_errors():
    """Walk every module: an Exception subclass defined in the package is loader.errors' (or named INTERNAL)."""
    found: dict[str, type] = {}
    for name in package_modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == name
                    and not attr.startswith("_")):
                found[f"{name}.{attr}"] = obj
    assert len(package_modules()) >= 40
    stray = {qual for qual in found if not qual.startswith("loader.errors.") and qual not in INTERNAL}
    assert not stray, f"define these in loader/errors.py and export them from loader: {sorted(stray)}"
    for qual in INTERNAL:
        assert qual in found and not issubclass(found[qual], LoaderError), qual


def test_moved_exceptions_are_the_same_classes_at_their_old_paths():
    from loader.advisor.modelspec import ModelSpecError as OldModelSpecError
    from loader.load.imageloader import DecodeError as OldDecodeError
    from loader.load.imageloader import __all__ as imageloader_all

    assert OldDecodeError is DecodeError is loader.DecodeError and "DecodeError" in imageloader_all
    assert OldModelSpecError is ModelSpecError is loader.ModelSpecError
    assert issubclass(DecodeError, RuntimeError) and issubclass(ModelSpecError, ValueError)


def test_the_error_classes_are_the_built_ins_callers_catch():
    e = ArgumentError("seed must be an int", param="seed")
    assert isinstance(e, (ValueError, TypeError, LoaderError)) and e.param == "seed"
    assert LoaderError("x").param is None
    assert issubclass(loader.DaliMissingError, ImportError) and issubclass(loader.DatasetError, ValueError)


def test_import_loader_stays_light():
    code = ("import sys, loader; loader.LoaderError, loader.ArgumentError, loader.DecodeError; "
            "print('torch' in sys.modules, any(m.startswith('nvidia') for m in sys.modules)); "
            "loader.Augment; print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0 and r.stdout.split() == ["False", "False", "True"], r.stderr


@pytest.mark.parametrize("given, limit, expected", [
    (ValueError("bad value\n  in line 3\n"), None, "bad value in line 3"),
    ("  one  two  ", None, "one  two"),                    # inner spacing kept (paths, reprs)
    (KeyError(), None, "KeyError"),                        # no text: the class name
    (RuntimeError(""), None, "RuntimeError"),
    ("", None, ""),
    ("x" * 20, 10, "xxxxxxx..."),
    ("x" * 10, 10, "x" * 10),
    (OSError(2, "No such file"), None, "[Errno 2] No such file"),
])
def test_one_line(given, limit, expected):
    assert one_line(given, limit=limit) == expected
