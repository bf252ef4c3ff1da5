"""Old module paths (loader 0.3: every module directly in ``loader/``) that still import, for one release.

loader 0.4 groups the modules by pipeline stage (``convert/``, ``format/``, ``load/``,
``augment/``, ``check/``; docs/development.md). ``import loader.pipeline`` and the like keep
working until 0.5: the old name is the new module itself (the same object, so a monkeypatch on
either name is seen by both), with a ``DeprecationWarning`` naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old name (loader.X) -> new module path; one home for the move.
MOVED = {
    "batches": "loader.load.batches", "buffers": "loader.load.buffers", "feed": "loader.load.feed",
    "imageloader": "loader.load.imageloader", "pipeline": "loader.load.pipeline",
    "placement": "loader.load.placement", "sampler": "loader.load.sampler",
    "columns": "loader.format.columns", "dataset": "loader.format.dataset", "manifest": "loader.format.manifest",
    "manifest_legacy": "loader.format.manifest_legacy", "recordguard": "loader.format.recordguard",
    "shards": "loader.format.shards",
    "destination": "loader.convert.destination", "imagecheck": "loader.convert.imagecheck",
    "indexwriter": "loader.convert.indexwriter", "labelfile": "loader.convert.labelfile",
    "packing": "loader.convert.packing", "scan": "loader.convert.scan",
    "recipe": "loader.augment.recipe",
    "decodecheck": "loader.check.decodecheck", "doctor": "loader.check.doctor", "verify": "loader.check.verify",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._own_spec = module.__spec__     # importlib is about to set the alias's spec on it
        return module

    def exec_module(self, module) -> None:
        # The target module ran when it was imported: only give it back its own __spec__.
        module.__spec__ = self._own_spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds ``loader.<old>`` and answers with the module at its new path (and a DeprecationWarning)."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, old = fullname.rpartition(".")
        if prefix != "loader" or old not in MOVED:
            return None
        new = MOVED[old]
        warnings.warn(f"{fullname} moved to {new} in loader 0.4; the old path goes in 0.5", DeprecationWarning,
                      stacklevel=3)
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``import loader`` does)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
