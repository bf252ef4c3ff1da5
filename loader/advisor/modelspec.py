"""``--model MODULE:CALLABLE``: import the user's model factory and check what it builds.

The spec is read like a console-script entry point: ``MODULE`` is imported
(from the current directory or ``PYTHONPATH``), ``CALLABLE`` is an attribute
path in it (``pkg.mod:Factory.build`` works). The callable gets
``num_classes=`` when it accepts that keyword, and must return a
``torch.nn.Module`` whose output for a ``[B, 3, H, W]`` batch is ``[B, num_classes]``.
Every way this can go wrong is a :class:`ModelSpecError`: one line naming the
spec and what to change, including user code that calls ``sys.exit`` (or runs argparse on
loader's own command line) while it is imported or called: what it printed then is held back
and its last line quoted instead.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import sys
from collections.abc import Callable, Iterator

from loader.errors import ModelSpecError, one_line  # ModelSpecError's home is loader.errors (still exported here)

__all__ = ["ModelSpecError", "build_model", "call_factory", "check_output", "load_factory"]


def _exit_text(e: SystemExit, held: str) -> str:
    """``sys.exit(CODE)``, plus the last line the user code printed (argparse's error, say)."""
    last = next((line.strip() for line in reversed(held.splitlines()) if line.strip()), "")
    said = f"; its last output: {last[:200]!r}" if last else ""
    return f"called sys.exit({e.code!r}){said}"


@contextlib.contextmanager
def _held_output() -> Iterator[io.StringIO]:
    """Hold what user code prints (Python-level stdout/stderr) for the duration of the block:
    passed on to stderr if the block ends normally (stdout may carry loader's own output),
    dropped if it raises (the caller quotes its last line). sys.stdout / sys.stderr are restored."""
    held = io.StringIO()
    with contextlib.redirect_stdout(held), contextlib.redirect_stderr(held):
        yield held
    sys.stderr.write(held.getvalue())


def load_factory(spec: str, flag: str = "--model") -> Callable:
    """The callable that ``"MODULE:CALLABLE"`` names; ``flag`` is how messages name the spec
    (``--model``, or ``loader show``'s ``--batch-transform``).

    >>> load_factory("collections:OrderedDict").__name__
    'OrderedDict'
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ModelSpecError(f"{flag} must be MODULE:CALLABLE (e.g. torchvision.models:resnet50), got {spec!r}")
    module_name, attr = (p.strip() for p in spec.split(":"))
    if not module_name or not attr:
        raise ModelSpecError(f"{flag} must be MODULE:CALLABLE (e.g. torchvision.models:resnet50), got {spec!r}")
    # The console script does not put the current directory on sys.path (python -m does);
    # entry-point semantics say it should be there while the module is imported. Restored after.
    cwd_added = os.getcwd() not in sys.path and "" not in sys.path
    if cwd_added:
        sys.path.insert(0, os.getcwd())
    held = None
    try:
        with _held_output() as held:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ModelSpecError(f"{flag} {spec}: cannot import {module_name!r} ({e}); is it on PYTHONPATH "
                             f"or in the current directory?") from None
    except SystemExit as e:   # sys.exit or argparse at import time: not loader's exit
        raise ModelSpecError(f"{flag} {spec}: importing {module_name!r} {_exit_text(e, held.getvalue())}; "
                             f"put the module's script code under `if __name__ == '__main__':`") from None
    except Exception as e:  # noqa: BLE001 - any error inside the user's module is a spec problem
        raise ModelSpecError(f"{flag} {spec}: importing {module_name!r} failed: {type(e).__name__}: "
                             f"{one_line(e, limit=300)}") from None
    finally:
        if cwd_added and os.getcwd() in sys.path:
            sys.path.remove(os.getcwd())
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelSpecError(f"{flag} {spec}: {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ModelSpecError(f"{flag} {spec}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


def _takes_num_classes(factory: Callable) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):   # some builtins have no signature: call without the keyword
        return False
    return any(p.name == "num_classes" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or
               p.kind == p.VAR_KEYWORD for p in params)


def call_factory(factory: Callable, num_classes: int, *, spec: str, flag: str = "--model", hint: str = ""):
    """``factory(num_classes=num_classes)`` (or ``factory()`` if it takes no such keyword): user code,
    so ``sys.exit`` and any exception in it become one :class:`ModelSpecError` line naming ``flag spec``
    (``hint``: what the factory should do, added after a ``sys.exit``)."""
    held = None
    try:
        with _held_output() as held:
            return factory(num_classes=num_classes) if _takes_num_classes(factory) else factory()
    except SystemExit as e:
        raise ModelSpecError(f"{flag} {spec}: calling it {_exit_text(e, held.getvalue())}{hint}") from None
    except Exception as e:  # noqa: BLE001 - the user's code: report it in one line
        raise ModelSpecError(f"{flag} {spec}: calling it failed: {type(e).__name__}: "
                             f"{one_line(e, limit=300)}") from None


def build_model(factory: Callable, num_classes: int, *, spec: str = "the model"):
    """``factory(num_classes=num_classes)`` (or ``factory()`` if it takes no such keyword), checked to be a Module."""
    import torch

    model = call_factory(factory, num_classes, spec=spec, hint="; a model factory must return a torch.nn.Module")
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(f"--model {spec}: returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def check_output(model, num_classes: int, image_size: int, device, *, spec: str = "the model") -> None:
    """One forward pass of a ``[2, 3, image_size, image_size]`` batch must give ``[2, num_classes]``.

    Runs in eval mode without gradients (BatchNorm's running stats are left as
    they were) and puts the model back in its previous mode.
    """
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 3, image_size, image_size, device=device))
    except SystemExit as e:
        raise ModelSpecError(f"--model {spec}: a forward pass of a [2, 3, {image_size}, {image_size}] batch "
                             f"called sys.exit({e.code!r})") from None
    except Exception as e:  # noqa: BLE001
        raise ModelSpecError(f"--model {spec}: a forward pass of a [2, 3, {image_size}, {image_size}] batch "
                             f"failed: {type(e).__name__}: {one_line(e, limit=300)}") from None
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (2, num_classes):
        got = f"shape {list(shape)}" if shape is not None else f"a {type(out).__name__}"
        raise ModelSpecError(f"--model {spec}: output must be [batch, num_classes] = [2, {num_classes}] for "
                             f"this dataset's {num_classes} classes, got {got}")
