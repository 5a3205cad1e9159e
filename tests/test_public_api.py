"""The top-level API (what ``tide_lightning.__all__`` re-exports) is fully annotated."""

from __future__ import annotations

import inspect

import tide_lightning


def _callables(name: str, obj: object):
    if inspect.isclass(obj):
        for member, fn in vars(obj).items():
            if inspect.isfunction(fn) and (not member.startswith("_") or member == "__init__"):
                yield f"{name}.{member}", fn
    elif callable(obj):
        yield name, obj


def test_every_exported_function_has_annotated_parameters_and_return():
    missing = []
    for name in tide_lightning.__all__:
        for label, fn in _callables(name, getattr(tide_lightning, name)):
            sig = inspect.signature(fn)
            bare = [
                p
                for p, v in sig.parameters.items()
                if v.annotation is inspect.Parameter.empty
                and p not in ("self", "cls")
                and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)
            ]
            if bare or sig.return_annotation is inspect.Signature.empty:
                missing.append(f"{label}: {bare or 'return'}")
    assert missing == []
