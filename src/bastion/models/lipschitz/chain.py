"""A feed-forward model as the chain of layers its forward pass runs, with each layer's input.

The Lipschitz bound of the seed (``L <= prod_i ||W_i||``, "Certified Deterministic Defenses
(1)") holds for a network with no skip connections: a composition of layers, each applied to
the previous one's output. ``layer_chain`` finds that composition by running one forward
pass with hooks on every leaf module and checking that each layer reads exactly what the
previous one wrote, value for value (a flatten or reshape between them is allowed).
A model that branches, adds a skip connection or uses a module twice is refused, so a bound
is never computed for a graph it does not describe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bastion._torch import model_mode, unwrap
from bastion.errors import InputError


@dataclass(frozen=True)
class ChainLayer:
    """One layer of a chain model.

    Args:
        name: the module's dotted name in the model (``named_modules``), e.g. ``net.conv1``.
        module: the module itself (parametrized weights stay parametrized).
        input_shape: the shape of one input example, without the batch dimension, e.g.
            ``(16, 14, 14)`` for a conv or ``(3136,)`` for a linear layer.
        output_shape: the shape of one output example.
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with no children (a parametrized layer counts as one leaf)."""
    out = []
    for name, m in model.named_modules():
        if "parametrizations" in name.split("."):
            continue  # the parametrization modules inside a parametrized layer
        if all(n == "parametrizations" for n, _ in m.named_children()):
            out.append((name, m))
    return out


def layer_chain(model: nn.Module, example: torch.Tensor) -> list[ChainLayer]:
    """The leaf layers of ``model`` in the order its forward runs them, with their shapes.

    Args:
        model: a feed-forward classifier, inputs ``[N, C, H, W]`` in [0, 1].
        example: one input batch ``[1, C, H, W]`` (any values) on the model's device.

    Returns:
        One :class:`ChainLayer` per leaf module called, in call order.

    Raises:
        InputError: if a leaf module is called twice, if a layer's input is not the previous
            layer's output (a skip connection, a branch, or an operation between layers that
            is not a view, such as an addition), or if the model's output is not the last
            layer's output.
    """
    net = unwrap(model)
    _refuse_hooks(net)
    leaves = _leaves(net)
    calls: list[tuple[str, nn.Module, tuple[int, ...], tuple[int, ...]]] = []
    seen: set[int] = set()
    # the previous layer's output, as values: a layer must read exactly these (so a
    # functional op between layers, an in-place change or a skip connection is caught)
    state: dict[str, torch.Tensor] = {"prev": example.detach().clone()}

    def pre_hook(name: str):
        def fn(mod: nn.Module, inputs: tuple) -> None:
            if id(mod) in seen:
                raise InputError(f"layer {name!r} is called twice in one forward pass; a "
                                 "product-of-norms bound needs each layer once")
            seen.add(id(mod))
            if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
                raise InputError(f"layer {name!r} takes {len(inputs)} inputs; a chain layer "
                                 "takes one tensor")
            prev = state["prev"]
            inp = inputs[0]
            if inp.numel() != prev.numel() or not torch.equal(inp.detach().reshape(-1),
                                                              prev.reshape(-1)):
                raise InputError(
                    f"layer {name!r} does not read the previous layer's output (a skip "
                    "connection, a branch, or an operation between layers that is not a "
                    "reshape): this model is not a chain, so the product of layer norms does "
                    "not bound it")
            calls.append((name, mod, tuple(inp.shape[1:]), ()))
        return fn

    def hook(name: str):
        def fn(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor):
                raise InputError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
            n, m, shape, _ = calls[-1]
            calls[-1] = (n, m, shape, tuple(output.shape[1:]))
            state["prev"] = output.detach().clone()
        return fn

    handles = [m.register_forward_pre_hook(pre_hook(n)) for n, m in leaves]
    handles += [m.register_forward_hook(hook(n)) for n, m in leaves]
    try:
        with torch.no_grad(), model_mode(net, False):
            out = net(example)
    finally:
        for h in handles:
            h.remove()
    if not calls:
        raise InputError("the model ran no layers")
    if not isinstance(out, torch.Tensor) or out.numel() != state["prev"].numel() or (
            not torch.equal(out.detach().reshape(-1), state["prev"].reshape(-1))):
        raise InputError("the model's output is not its last layer's output; the chain "
                         "bound cannot follow it")
    called = {id(m) for _, m, _, _ in calls}
    unused = [n for n, m in leaves if id(m) not in called and any(True for _ in m.parameters())]
    if unused:
        raise InputError(f"layers {unused} have weights but did not run on the example: the "
                         "forward takes a data-dependent path, which one chain cannot bound")
    _refuse_batch_mixing(net, example)
    return [ChainLayer(name=n, module=m, input_shape=i, output_shape=o)
            for n, m, i, o in calls]


def _refuse_hooks(net: nn.Module) -> None:
    """Refuse what the chain cannot see: forward hooks (they can change what a module
    computes) and batch-statistics BatchNorm (it mixes the examples of a batch)."""
    from torch.nn.modules import module as torch_module

    global_hooks = [getattr(torch_module, name, {}) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks")]
    if any(len(h) for h in global_hooks):
        raise InputError("global module forward hooks are registered; they can change what "
                         "any layer computes, so no bound can be certified")
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is None:
            raise InputError(f"BatchNorm {name!r} has no running statistics "
                             "(track_running_stats=False): it normalises every batch by its "
                             "own statistics, mixing examples, so no bound can be certified")
        hooks = (m._forward_hooks, m._forward_pre_hooks,
                 getattr(m, "_forward_hooks_with_kwargs", {}))
        if any(len(h) for h in hooks):
            raise InputError(f"module {name or type(m).__name__!r} has forward hooks; they can "
                             "change what it computes, so no bound can be certified")


def _refuse_batch_mixing(net: nn.Module, example: torch.Tensor) -> None:
    """A layer that mixes the examples of a batch (batch statistics, a sort across dim 0) is
    not a function of each input: compare a batch of two with each input alone."""
    other = (example.detach() * 0.5 + 0.25).flip(-1)
    both = torch.cat([example.detach(), other])
    with torch.no_grad(), model_mode(net, False):
        together = net(both)
        alone = torch.cat([net(example.detach()), net(other)])
    scale = float(alone.abs().max()) + 1e-30
    if not torch.allclose(together, alone, rtol=1e-5, atol=1e-6 * scale):
        raise InputError("the model's output for an input depends on the other inputs of "
                         "its batch (batch statistics or an operation across the batch): "
                         "it is not a function a Lipschitz bound can certify")
