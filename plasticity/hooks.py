"""Capturing activations with forward hooks, separate from the metrics computed on them.

Hooks sit on activation *modules* (``nn.ReLU``, ``nn.Tanh``, ...): a hook sees the
module's input (the pre-activation) and output (the post-activation) at once. A layer is
named after the parameterised module just before its activation in the parent container
(``conv1``, ``fc``), which is what a reader expects to see in TensorBoard; otherwise after
the activation module itself; normalisation layers in between are skipped. Activations applied
functionally (``F.relu`` inside ``forward``) are invisible to hooks: use modules in networks you
want to monitor.

A network takes one tensor of observations, or named tensors (:data:`Inputs`: a batch of sequences
such as states, actions and rewards, as the sequence models take them); :func:`run_network` calls it
either way. Activations of sequence models are (B, T, D): the capture flattens them to (B*T, D), so
every per-unit statistic and rank reads the last dim as the unit axis and each token as a sample.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from torch import Tensor, nn

#: a network's inputs: an observation batch, or a batch of sequences by name (``net(**inputs)``)
Inputs = Union[Tensor, Mapping[str, Tensor]]


def run_network(net: nn.Module, inputs: Inputs) -> Any:
    """``net(inputs)``, or ``net(**inputs)`` for named inputs."""
    return net(**inputs) if isinstance(inputs, Mapping) else net(inputs)


def map_inputs(fn: Callable[[Tensor], Tensor], inputs: Inputs) -> Inputs:
    """``fn`` applied to the tensor, or to each named tensor (clone, move to a device, slice)."""
    return {k: fn(v) for k, v in inputs.items()} if isinstance(inputs, Mapping) else fn(inputs)


def input_count(inputs: Inputs) -> int:
    """Samples (observations, or sequences) in a batch of inputs."""
    first = next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs
    return int(first.shape[0])


def as_units(x: Tensor) -> Tensor:
    """Activations with the unit axis where the metrics expect it: (B, T, D) token sequences -> (B*T, D);
    (N, D) and (N, C, H, W) as they are."""
    return x.reshape(-1, x.shape[-1]) if x.ndim == 3 else x

class Features(nn.Identity):
    """A marker whose input the monitor reads as a layer's features (ranks, dormant units, norms) where no
    activation module produces them, e.g. the output of each block of a sequence backbone
    (:func:`mark_outputs`). Units of such features can be negative, so they are never counted dead."""


def mark_outputs(blocks: nn.ModuleList, markers: nn.ModuleList) -> None:
    """Pass each block's output (the first element when it returns a tuple) through its :class:`Features`
    marker, so that the monitor captures it under the marker's name."""
    def hook(marker: nn.Module) -> Callable[..., None]:
        def show(_module: nn.Module, _inputs: Any, out: Any) -> None:  # returns None: the output is unchanged
            marker(out[0] if isinstance(out, tuple) else out)
        return show

    for block, marker in zip(blocks, markers):
        block.register_forward_hook(hook(marker))


ACTIVATION_KINDS: dict[type, str] = {
    Features: "features",
    nn.ReLU: "relu", nn.ReLU6: "relu", nn.LeakyReLU: "leaky_relu", nn.GELU: "gelu", nn.ELU: "elu",
    nn.SiLU: "silu", nn.Mish: "mish", nn.Softplus: "softplus", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
}


#: normalisation layers: a layer name never comes from them (``fc`` -> ``norm_fc`` -> ReLU is still "fc")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class ActivationLayer:
    name: str
    kind: str
    module: nn.Module


def _has_own_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def activation_layers(model: nn.Module) -> list[ActivationLayer]:
    """Every activation module of ``model``, named after the layer that feeds it."""
    layers: list[ActivationLayer] = []
    for parent_name, parent in model.named_modules():
        previous = None
        for child_name, child in parent.named_children():
            qualified = f"{parent_name}.{child_name}" if parent_name else child_name
            kind = ACTIVATION_KINDS.get(type(child))
            if kind is not None:
                layers.append(ActivationLayer(previous or qualified, kind, child))
            elif _has_own_params(child) and not isinstance(child, NORM_TYPES):
                previous = qualified
    return layers


def parameterised_layers(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Modules that own parameters (Linear, Conv, norms), by qualified name."""
    return {name or "module": list(m.parameters(recurse=False))
            for name, m in model.named_modules() if _has_own_params(m)}


class ActivationCapture:
    """Context manager that records (pre, post) activations of every activation layer.

    >>> with ActivationCapture(net) as cap:
    ...     net(x)
    >>> cap.records["fc"]  # (kind, pre-activation, post-activation)
    """

    def __init__(self, model: nn.Module):
        self.layers = activation_layers(model)
        self.records: dict[str, tuple[str, Tensor, Tensor]] = {}
        self._handles: list = []

    def __enter__(self) -> "ActivationCapture":
        for layer in self.layers:
            def hook(module, inputs, output, layer=layer):
                self.records[layer.name] = (layer.kind, as_units(inputs[0].detach()), as_units(output.detach()))
            self._handles.append(layer.module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
