"""Save nested state (optimizer, scheduler, RNG, method state) without pickle.

``split_state`` replaces every tensor of a nested dict/list structure by a reference and
collects the tensors in a flat dict for safetensors; the skeleton goes to JSON (both in a
:class:`SplitState`). ``join_state`` reverses it. Integer dict keys (optimizer states use
them) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bastion.errors import InputTypeError

_INT_KEY = "__int__:"


@dataclass(frozen=True, eq=False)
class SplitState:
    """A nested state split by :func:`split_state`; ``join_state(skeleton, tensors)`` rebuilds it.

    Args:
        skeleton: the structure with every tensor replaced by ``{"__tensor_ref__": name}``
            and integer dict keys encoded as ``"__int__:<k>"``; JSON-serialisable.
        tensors: ``{name: tensor}``, each detached, on the CPU and contiguous (ready for
            safetensors); names are the dotted paths of the tensors in the structure.
    """

    skeleton: Any
    tensors: dict[str, torch.Tensor]


def split_state(obj: Any, prefix: str = "") -> SplitState:
    """Split ``obj`` into a JSON-safe skeleton and a flat ``{name: tensor}`` dict."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any, path: str) -> Any:
        if isinstance(o, torch.Tensor):
            tensors[path] = o.detach().cpu().contiguous()
            return {"__tensor_ref__": path}
        if isinstance(o, dict):
            out = {}
            for k, v in o.items():
                key = f"{_INT_KEY}{k}" if isinstance(k, int) else str(k)
                out[key] = walk(v, f"{path}.{key}" if path else key)
            return out
        if isinstance(o, list | tuple):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(o)]
        if o is None or isinstance(o, bool | int | float | str):
            return o
        raise InputTypeError(f"cannot save state value of type {type(o).__name__} at {path!r}")

    skeleton = walk(obj, prefix)
    return SplitState(skeleton=skeleton, tensors=tensors)


def join_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``split_state``."""
    if isinstance(skeleton, dict):
        if "__tensor_ref__" in skeleton:
            return tensors[skeleton["__tensor_ref__"]]
        out = {}
        for k, v in skeleton.items():
            key: Any = int(k[len(_INT_KEY):]) if k.startswith(_INT_KEY) else k
            out[key] = join_state(v, tensors)
        return out
    if isinstance(skeleton, list):
        return [join_state(v, tensors) for v in skeleton]
    return skeleton
