"""Network bodies shared by the agents: Nature CNN (Atari), MinAtar CNN, MLP.

Every network is a flat ``nn.Sequential`` with named layers (``conv1``, ``act1``, ...,
``fc``, ``act_fc``, ``head``) so that diagnostics read well (``plasticity/dead_frac/actor/fc``)
and so that :func:`forward_with_preactivations` can return the pre-activations that the
PFO loss regularises. Networks take raw observations: the scaling of pixels happens inside.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plasticity.hooks import ACTIVATION_KINDS


class Scale(nn.Module):
    """Casts observations to float and multiplies by a constant (1/255 for pixels).

    Under autocast the output is already in the autocast dtype (bf16 holds 0..255 exactly),
    which saves the convolution a cast of its input.
    """

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor
        self.memory_format = torch.preserve_format  # channels-last: see ``to_channels_last``

    def forward(self, x: Tensor) -> Tensor:
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32
        x = x.to(dtype, memory_format=self.memory_format if x.dim() == 4 else torch.preserve_format)
        return x * self.factor if self.factor != 1.0 else x

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def to_channels_last(net: nn.Module) -> nn.Module:
    """Conv weights, and through ``Scale`` the inputs, in channels-last layout: the same maths,
    faster oneDNN convolutions on CPU (the cast to float does the layout change in the same copy)."""
    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit memory_format
    for module in net.modules():
        if isinstance(module, Scale):
            module.memory_format = torch.channels_last
    return net


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


def nature_cnn(obs_shape: tuple[int, ...], out_dim: int, hidden: int = 512) -> nn.Sequential:
    """Mnih et al. 2015: conv 32-8-4, 64-4-2, 64-3-1, Linear(hidden), ReLU; pixels scaled by 1/255."""
    c, h, w = obs_shape
    for k, s in ((8, 4), (4, 2), (3, 1)):
        h, w = _conv_out(h, k, s), _conv_out(w, k, s)
    return nn.Sequential(OrderedDict([
        ("scale", Scale(1 / 255)),
        ("conv1", nn.Conv2d(c, 32, 8, 4)), ("act1", nn.ReLU()),
        ("conv2", nn.Conv2d(32, 64, 4, 2)), ("act2", nn.ReLU()),
        ("conv3", nn.Conv2d(64, 64, 3, 1)), ("act3", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(64 * h * w, hidden)), ("act_fc", nn.ReLU()),
        ("head", nn.Linear(hidden, out_dim)),
    ]))


def minatar_cnn(obs_shape: tuple[int, ...], out_dim: int, hidden: int = 128) -> nn.Sequential:
    """Young & Tian 2019 (MinAtar): conv 16-3-1, ReLU, Linear(hidden), ReLU."""
    c, h, w = obs_shape
    return nn.Sequential(OrderedDict([
        ("scale", Scale(1.0)),
        ("conv1", nn.Conv2d(c, 16, 3, 1)), ("act1", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(16 * (h - 2) * (w - 2), hidden)), ("act_fc", nn.ReLU()),
        ("head", nn.Linear(hidden, out_dim)),
    ]))


def mlp(obs_shape: tuple[int, ...], out_dim: int, hidden: int = 64, activation: str = "tanh",
        depth: int = 2) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` (CleanRL's classic-control PPO: 2 x 64 tanh)."""
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
    layers: list[tuple[str, nn.Module]] = [("scale", Scale(1.0)), ("flatten", nn.Flatten())]
    width = math.prod(obs_shape)
    for i in range(1, depth + 1):
        name = "fc" if i == depth else f"fc{i}"
        layers += [(name, nn.Linear(width, hidden)), (f"act_{name}", act())]
        width = hidden
    layers.append(("head", nn.Linear(width, out_dim)))
    return nn.Sequential(OrderedDict(layers))


def minigrid_cnn(obs_shape: tuple[int, ...], out_dim: int, hidden: int = 64) -> nn.Sequential:
    """The MiniGrid/BabyAI baseline (lcswillems/rl-starter-files model.py): conv 16-2, ReLU, max-pool 2, conv 32-2,
    ReLU, conv 64-2, ReLU on the 7 x 7 view, then Linear(hidden), Tanh; no input scaling (raw grid indices)."""
    c, h, w = obs_shape
    side_h, side_w = (h - 1) // 2 - 2, (w - 1) // 2 - 2
    return nn.Sequential(OrderedDict([
        ("scale", Scale(1.0)),
        ("conv1", nn.Conv2d(c, 16, 2)), ("act1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(16, 32, 2)), ("act2", nn.ReLU()),
        ("conv3", nn.Conv2d(32, 64, 2)), ("act3", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(64 * side_h * side_w, hidden)), ("act_fc", nn.Tanh()),
        ("head", nn.Linear(hidden, out_dim)),
    ]))


def _glyph_cnn(layers: int, embedding: int) -> nn.Sequential:
    """NLE baseline's convolution stack: ``layers`` 3x3 convolutions (padding 1), 16 filters then 8, each with ELU."""
    channels = [embedding] + [16] * (layers - 1) + [8]
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Conv2d(channels[i], channels[i + 1], 3, padding=1), nn.ELU()]
    return nn.Sequential(*mods)


class NetHackEncoder(nn.Module):
    """The encoder of NLE's baseline (``NetHackNet`` in nle/agent/agent.py of github facebookresearch/nle, NLE
    0.x; read, not copied), on the flat observations of :mod:`envs.nethack`: a 32-dim glyph embedding, a CNN over
    the whole 21 x 79 map and one over the 9 x 9 crop centred on the agent (5 layers each: 16 filters, then 8;
    ELU), an MLP over the 27 bottom-line statistics (27-32-32, ReLU), and, as in the retention paper's NetHack
    models (finetuning-RL-as-CL ``chaotic_dwarf.py`` ``MessageEncoder``), an MLP over the message bytes / 255
    (256-128-128, ELU). The NLE baseline has no message encoder. Out: the four concatenated."""

    def __init__(self, embedding: int = 32, crop: int = 9, layers: int = 5):
        super().__init__()
        from nle import nethack

        from envs.nethack import BLSTATS, MAP_SHAPE, MESSAGE
        self.map_shape, self.crop, self.blstats, self.message = MAP_SHAPE, crop, BLSTATS, MESSAGE
        self.embed = nn.Embedding(nethack.MAX_GLYPH, embedding)
        self.map_cnn, self.crop_cnn = _glyph_cnn(layers, embedding), _glyph_cnn(layers, embedding)
        self.blstats_mlp = nn.Sequential(nn.Linear(BLSTATS, embedding), nn.ReLU(), nn.Linear(embedding, embedding),
                                         nn.ReLU())
        self.message_mlp = nn.Sequential(nn.Linear(MESSAGE, 128), nn.ELU(), nn.Linear(128, 128), nn.ELU())
        h, w = MAP_SHAPE
        self.out_dim = embedding + 8 * h * w + 8 * crop * crop + 128

    def crops(self, glyphs: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """(B, crop, crop) glyphs centred on each (x, y), 0 (no glyph) outside the map."""
        r = self.crop // 2
        padded = F.pad(glyphs, (r, r, r, r))
        offsets = torch.arange(self.crop, device=glyphs.device)
        rows = (y[:, None] + offsets)[:, :, None]
        cols = (x[:, None] + offsets)[:, None, :]
        return padded[torch.arange(len(glyphs), device=glyphs.device)[:, None, None], rows, cols]

    def forward(self, obs: Tensor) -> Tensor:
        h, w = self.map_shape
        glyphs = obs[:, :h * w].long().view(-1, h, w)
        blstats = obs[:, h * w:h * w + self.blstats]
        message = obs[:, h * w + self.blstats:]
        x, y = blstats[:, 0].long().clamp(0, w - 1), blstats[:, 1].long().clamp(0, h - 1)
        full = self.map_cnn(self.embed(glyphs).permute(0, 3, 1, 2)).flatten(1)
        local = self.crop_cnn(self.embed(self.crops(glyphs, x, y)).permute(0, 3, 1, 2)).flatten(1)
        return torch.cat([self.blstats_mlp(blstats), local, full, self.message_mlp(message / 255.0)], 1)


def nethack_net(obs_shape: tuple[int, ...], out_dim: int, hidden: int = 512) -> nn.Sequential:
    """NLE's baseline network up to its LSTM core (``ppo_lstm`` adds the core, :mod:`agents.recurrent_ppo`):
    :class:`NetHackEncoder`, then Linear(512), ReLU, Linear(hidden), ReLU (its ``fc``; h_dim 512)."""
    encoder = NetHackEncoder()
    return nn.Sequential(OrderedDict([
        ("scale", Scale(1.0)), ("encoder", encoder),
        ("fc1", nn.Linear(encoder.out_dim, 512)), ("act_fc1", nn.ReLU()),
        ("fc", nn.Linear(512, hidden)), ("act_fc", nn.ReLU()),
        ("head", nn.Linear(hidden, out_dim)),
    ]))


NETWORKS = {"nature_cnn": nature_cnn, "minatar_cnn": minatar_cnn, "minigrid_cnn": minigrid_cnn,
            "nethack_net": nethack_net, "mlp": mlp}


def build_network(kind: str, obs_shape: tuple[int, ...], out_dim: int, hidden: int,
                  activation: str = "relu") -> nn.Sequential:
    if kind == "mlp":
        return mlp(obs_shape, out_dim, hidden, activation)
    return NETWORKS[kind](obs_shape, out_dim, hidden)


def orthogonal_init(net: nn.Sequential, head_gain: float) -> None:
    """CleanRL/SB3 initialisation: orthogonal weights (gain sqrt 2, head ``head_gain``), zero biases."""
    for name, m in net.named_children():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.orthogonal_(m.weight, head_gain if name == "head" else math.sqrt(2))
            assert m.bias is not None  # the networks here are built with biases
            nn.init.zeros_(m.bias)


def can_run_paired(a: nn.Sequential, b: nn.Sequential) -> bool:
    """Whether :func:`paired_forward` applies: equal convolution stacks (then Flatten) with
    parameter-free activations in between, and no hooks that a fused call would bypass."""
    if len(a) != len(b):
        return False
    for ma, mb in zip(a, b):
        if type(ma) is not type(mb) or ma._forward_hooks or mb._forward_hooks or ma._forward_pre_hooks \
                or mb._forward_pre_hooks:
            return False
        if isinstance(ma, nn.Flatten):
            return any(isinstance(m, nn.Conv2d) for m in a)
        if isinstance(ma, nn.Conv2d):
            if any(getattr(ma, k) != getattr(mb, k) for k in ("in_channels", "out_channels", "kernel_size", "stride",
                                                                 "padding", "dilation", "groups")) \
                    or ma.groups != 1 or ma.bias is None or mb.bias is None or ma.padding_mode != "zeros":
                return False
        elif type(ma) not in ACTIVATION_KINDS:
            return False
    return False


def paired_forward(a: nn.Sequential, b: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Run two networks of equal convolutional structure (:func:`can_run_paired`) on the same input
    as one network twice as wide: the first convolution with both networks' filters at once, the
    later ones as grouped convolutions (groups=2), split at Flatten into the two Linear tails.

    The same maths as ``a(x)``, ``b(x)`` (gradients reach each network's own parameters); fewer,
    larger kernels, and one read of the shared input. Returns (a(x), b(x), a's pre-activations, the
    inputs of its activation modules in order, for PFO).
    """
    pre: list[Tensor] = []
    h, groups, tail = x, 1, 0
    for tail, (ma, mb) in enumerate(zip(a, b)):
        if isinstance(ma, nn.Flatten):
            break
        if isinstance(ma, nn.Conv2d):
            mb_conv = cast(nn.Conv2d, mb)  # can_run_paired: b has a's layer types, and the convs have biases
            biases = cast(list[Tensor], [ma.bias, mb_conv.bias])
            h = F.conv2d(h, torch.cat([ma.weight, mb_conv.weight]), torch.cat(biases), ma.stride,
                         ma.padding, ma.dilation, groups)
            groups = 2
        else:
            pre.append(h[:, :h.shape[1] // 2])
            h = ma(h)
    half = h.shape[1] // 2
    ha, hb = h[:, :half], h[:, half:]
    for ma, mb in zip(list(a)[tail:], list(b)[tail:]):
        if type(ma) in ACTIVATION_KINDS:
            pre.append(ha)
        ha, hb = ma(ha), mb(hb)
    return ha, hb, pre


def forward_with_preactivations(net: nn.Sequential, x: Tensor, all_layers: bool) -> tuple[Tensor, Tensor]:
    """Run ``net`` and return (output, phi).

    phi is the input of the last activation module (the penultimate layer's
    pre-activations, PFO's default) or, with ``all_layers``, the inputs of every
    activation module flattened and concatenated (PFO's all-layers option).
    """
    pre: list[Tensor] = []
    for module in net:
        if type(module) in ACTIVATION_KINDS:
            pre.append(x)
        x = module(x)
    return x, pfo_features(pre, all_layers)


def pfo_features(pre: list[Tensor], all_layers: bool) -> Tensor:
    """phi from the inputs of a network's activation modules: the last (the penultimate layer's
    pre-activations) or, with ``all_layers``, all of them flattened and concatenated."""
    if not pre:
        raise ValueError("network has no activation module to take features from")
    return torch.cat([p.flatten(1) for p in pre], 1) if all_layers else pre[-1].flatten(1)
