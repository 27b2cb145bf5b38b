"""Plasticity interventions: small, composable pieces that wrap a model and/or its optimiser.

Each intervention acts through at most three seams, so that it works with any agent and any
``torch.optim.Optimizer``:

* ``prepare(net)``: change the architecture before optimisers exist (normalisation layers);
* optimiser step hooks: before a step (gradient terms such as L2-init, learning-rate
  schedules) and after it (projections, resets, perturbations), counted in optimiser steps;
* ``observe_loss(value)``: what a change detector needs.

:class:`Interventions` composes the ones named in ``interventions.use`` (``--intervention``).
Unless stated otherwise, re-initialisation uses each module's own ``reset_parameters()``
(PyTorch's default initialisation), and "optimiser state" means Adam-style moment buffers
(``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, ``momentum_buffer``), reset where the
weights they belong to are reset.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, cast

import torch
from torch import Tensor, nn

from configs import ConfigError, param
from plasticity import metrics as M
from plasticity.hooks import ACTIVATION_KINDS, NORM_TYPES, ActivationCapture, Inputs, run_network

WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


@dataclass
class InterventionConfig:
    """Which interventions run, and their settings."""
    use: str = param("Comma-separated interventions, by their names in REGISTRY (empty: none)")
    weight_decay: float = param("L2 coefficient of layernorm_wd", min=0.0)
    nap_scale_decay: float = param("NaP: weight decay on the normalisation gains and offsets", min=0.0)
    rewarm_period: int = param("ELR re-warming: optimiser steps per cycle (0: restart when CUSUM fires)", min=0)
    rewarm_warmup: int = param("ELR re-warming: linear warm-up steps at the start of each cycle", min=0)
    rewarm_min_factor: float = param("ELR re-warming: lowest learning rate as a fraction of the configured one",
                                     min=0.0, max=1.0)
    cusum_threshold: float = param("CUSUM: fire when the standardised cumulative loss increase exceeds this", min=0.0,
                                   min_exclusive=True)
    cusum_drift: float = param("CUSUM: allowance k subtracted from each standardised deviation", min=0.0)
    redo_tau: float = param("ReDo: dormancy threshold tau", min=0.0)
    redo_period: int = param("ReDo: optimiser steps between recycling", min=1)
    sp_period: int = param("shrink_perturb: optimiser steps between applications", min=1)
    sp_shrink: float = param("shrink_perturb: lambda in theta <- lambda theta + p theta_init", min=0.0, max=1.0)
    sp_perturb: float = param("shrink_perturb: p", min=0.0)
    soft_sp_shrink: float = param("soft_shrink_perturb: lambda applied after every optimiser step", min=0.0, max=1.0)
    soft_sp_perturb: float = param("soft_shrink_perturb: p applied after every optimiser step", min=0.0)
    l2_init_coef: float = param("l2_init: lambda in loss + lambda ||theta - theta_0||^2", min=0.0)
    reset_period: int = param("reset: optimiser steps between hard resets", min=1)
    reset_layers: int = param("reset: re-initialise the last k parameterised layers (0: the whole network)", min=0)


# ---------------------------------------------------------------------------------------
# Architecture: a normalisation layer before every nonlinearity
# ---------------------------------------------------------------------------------------

def layer_weight(module: nn.Module) -> Tensor | None:
    """The weight matrix of a Linear/Conv layer, or of a layer that names its own (``weight_param``:
    a noisy linear layer's mean weight); None for any other module."""
    if isinstance(module, WEIGHT_TYPES):
        return module.weight
    name = getattr(module, "weight_param", None)
    return getattr(module, name) if name else None


def norm_for(module: nn.Module) -> nn.Module:
    """LayerNorm for a Linear(-like) layer's output; GroupNorm(1, C) (LayerNorm over C, H, W) for a conv's."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return nn.GroupNorm(1, module.out_channels)
    if layer_weight(module) is not None and hasattr(module, "out_features"):
        return nn.LayerNorm(module.out_features)
    raise ConfigError(f"cannot normalise the output of {type(module).__name__}")


def insert_norms(net: nn.Module) -> nn.Module:
    """``net`` with a norm layer between each weight layer and the activation after it.

    An ``nn.Sequential`` is rebuilt with the norms in place (a new container sharing the layers);
    any other module keeps its class and gets each of its containers rebuilt the same way
    (e.g. a trunk and two heads), so that every hidden layer is normalised.
    """
    if not isinstance(net, nn.Sequential):
        for name, child in list(net.named_children()):
            if next(child.children(), None) is not None:
                setattr(net, name, insert_norms(child))
        return net
    layers: list[tuple[str, nn.Module]] = []
    previous: tuple[str, nn.Module] | None = None
    for name, module in net.named_children():
        if type(module) in ACTIVATION_KINDS and previous is not None and layer_weight(previous[1]) is not None:
            layers.append((f"norm_{previous[0]}", norm_for(previous[1])))
        elif next(module.children(), None) is not None:
            module = insert_norms(module)
        layers.append((name, module))
        previous = (name, module)
    return nn.Sequential(OrderedDict(layers))


# ---------------------------------------------------------------------------------------
# Helpers on parameters and optimiser state
# ---------------------------------------------------------------------------------------

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def fresh_copy(module: ModuleT) -> ModuleT:
    """A re-initialised copy of ``module`` (every submodule's reset_parameters())."""
    clone = copy.deepcopy(module)
    for m in clone.modules():
        if hasattr(m, "reset_parameters"):
            getattr(m, "reset_parameters")()  # not m.reset_parameters: torch types Module attributes as Tensor | Module
    return clone


def reset_optimizer_state(opt: torch.optim.Optimizer, param: Tensor, mask: Tensor | None = None) -> None:
    """Zero the moment buffers of ``param`` (where ``mask`` is true, or everywhere)."""
    state = opt.state.get(param)
    if not state:
        return
    for key in MOMENT_KEYS:
        buf = state.get(key)
        if isinstance(buf, Tensor) and buf.shape == param.shape:
            if mask is None:
                buf.zero_()
            else:
                buf[mask] = 0


def weight_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear/Conv layers (and layers naming their weight, :func:`layer_weight`), in module order."""
    return [(name, m) for name, m in net.named_modules() if layer_weight(m) is not None]


class Cusum:
    """One-sided CUSUM change detector on a scalar stream (Page 1954), for loss increases.

    Deviations are standardised by the stream's mean and variance: exact (Welford) over the
    first ``warmup`` values, an exponential moving average (weight ``ema``) after that. The
    statistic s <- max(0, s + z - drift) fires when it exceeds ``threshold``; the detector then
    starts afresh (a new warm-up on the new level).
    """

    def __init__(self, threshold: float, drift: float, ema: float = 0.01, warmup: int = 100):
        self.threshold, self.drift, self.ema, self.warmup = threshold, drift, ema, warmup
        self.count, self.mean, self.var, self.stat = 0, 0.0, 0.0, 0.0

    def update(self, x: float) -> bool:
        if self.count >= self.warmup and self.var > 0:
            self.stat = max(0.0, self.stat + (x - self.mean) / math.sqrt(self.var) - self.drift)
            if self.stat > self.threshold:
                self.count, self.mean, self.var, self.stat = 0, 0.0, 0.0, 0.0
                return True
        self.count += 1
        delta = x - self.mean
        if self.count <= self.warmup:  # Welford: var is the running population variance
            self.mean += delta / self.count
            self.var += (delta * (x - self.mean) - self.var) / self.count
        else:
            self.mean += self.ema * delta
            self.var = (1 - self.ema) * (self.var + self.ema * delta * delta)
        return False

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def rewarm_factor(step: int, period: int, warmup: int, min_factor: float) -> float:
    """Learning-rate factor within a cycle: linear warm-up from min_factor to 1, then cosine to min_factor."""
    if warmup and step < warmup:
        return min_factor + (1 - min_factor) * step / warmup
    if period <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (period - warmup))
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------
# The interventions
# ---------------------------------------------------------------------------------------

class Intervention:
    """Base: every hook does nothing. ``net``/``opt`` pairs are given once by :meth:`attach`."""

    name = ""

    def prepare(self, net: nn.Module) -> nn.Module:
        return net

    def attach(self, nets: dict[str, nn.Module], opt: torch.optim.Optimizer) -> None:
        self.nets, self.opt = nets, opt

    def before_step(self, step: int) -> None: ...

    def after_step(self, step: int) -> None: ...

    def observe_loss(self, value: float) -> None: ...

    def metrics(self) -> dict[str, float]:
        """Scalars to log under ``interventions/`` (summed over the instances of one intervention)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class NormalizeAndProject(Intervention):
    """NaP (Lyle et al. 2024, arXiv 2407.01800): a norm layer before each nonlinearity, and after every
    optimiser step each Linear/Conv weight rescaled to its initial Frobenius norm (the head too;
    biases are free). Norm gains and offsets get decoupled weight decay ``scale_decay`` (the
    paper's "scale decay"; its exact treatment of gains and offsets is not known to us).
    The learning rate then needs an explicit schedule: use the agent's annealing or ``rewarm``."""

    name = "nap"

    def __init__(self, scale_decay: float):
        self.scale_decay = scale_decay
        self.target: dict[Tensor, float] = {}

    def prepare(self, net: nn.Module) -> nn.Module:
        return insert_norms(net)

    def attach(self, nets: dict[str, nn.Module], opt: torch.optim.Optimizer) -> None:
        super().attach(nets, opt)
        # weight_layers keeps the modules whose layer_weight is not None
        self.weights = [cast(Tensor, layer_weight(m)) for net in nets.values() for _, m in weight_layers(net)]
        self.norm_params = [p for net in nets.values() for m in net.modules() if isinstance(m, NORM_TYPES)
                            for p in m.parameters(recurse=False)]
        self.target = {w: float(w.detach().norm()) for w in self.weights}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        for w in self.weights:
            norm = w.norm()
            if norm > 0:
                w.mul_(self.target[w] / norm)
        if self.scale_decay:
            lr = self.opt.param_groups[0]["lr"]
            for p in self.norm_params:
                p.mul_(1 - lr * self.scale_decay)

    def state_dict(self) -> dict:
        return {"target": [self.target[w] for w in self.weights]}

    def load_state_dict(self, state: dict) -> None:
        self.target = dict(zip(self.weights, state["target"], strict=True))


class LayerNormWeightDecay(Intervention):
    """LayerNorm before each nonlinearity plus L2 regularisation (Lyle et al. 2024, "Disentangling the
    causes of plasticity loss"): the gradient of (wd/2)||theta||^2 is added before every step."""

    name = "layernorm_wd"

    def __init__(self, weight_decay: float):
        self.wd = weight_decay

    def prepare(self, net: nn.Module) -> nn.Module:
        return insert_norms(net)

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        for group in self.opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.add_(p, alpha=self.wd)


class ELRRewarming(Intervention):
    """ELR re-warming (Lyle, Sokar, Pascanu, Gyorgy 2025, Algorithm 1): the learning rate follows
    warm-up + cosine cycles between ``min_factor`` x lr and lr, restarted every ``period`` optimiser
    steps or, with period 0, whenever a CUSUM detector on the observed loss fires (then the cycle
    length is the steps since the last restart, at least ``warmup`` + 1). Meant for use with NaP."""

    name = "rewarm"

    def __init__(self, period: int, warmup: int, min_factor: float, detector: Cusum):
        self.period, self.warmup, self.min_factor, self.detector = period, warmup, min_factor, detector
        self.cycle_start = 0
        self.cycle_length = max(period, warmup + 1, 1)
        self.restarts = 0
        self._fire = False

    def attach(self, nets: dict[str, nn.Module], opt: torch.optim.Optimizer) -> None:
        super().attach(nets, opt)
        self.base_lr = [g["lr"] for g in opt.param_groups]

    def observe_loss(self, value: float) -> None:
        if self.period == 0 and self.detector.update(value):
            self._fire = True

    def before_step(self, step: int) -> None:
        if (self.period and step - self.cycle_start >= self.period) or self._fire:
            if self._fire:
                self.cycle_length = max(step - self.cycle_start, self.warmup + 1)
            self.cycle_start, self._fire = step, False
            self.restarts += 1
        factor = rewarm_factor(step - self.cycle_start, self.cycle_length, self.warmup, self.min_factor)
        for group, lr in zip(self.opt.param_groups, self.base_lr):
            group["lr"] = lr * factor

    def metrics(self) -> dict[str, float]:
        return {"interventions/rewarm_restarts": self.restarts}

    def state_dict(self) -> dict:
        return {"cycle_start": self.cycle_start, "cycle_length": self.cycle_length, "restarts": self.restarts,
                "fire": self._fire, "detector": self.detector.state_dict(), "base_lr": self.base_lr}

    def load_state_dict(self, state: dict) -> None:
        self.cycle_start, self.cycle_length = state["cycle_start"], state["cycle_length"]
        self.restarts, self._fire, self.base_lr = state["restarts"], state["fire"], state["base_lr"]
        self.detector.load_state_dict(state["detector"])


class ReDo(Intervention):
    """ReDo (Sokar et al. 2023): every ``period`` steps, on a batch of inputs, each tau-dormant unit of a
    hidden layer gets fresh incoming weights and a zero bias, its outgoing weights are zeroed,
    and the optimiser moments of exactly those weights are reset. A conv layer feeding a Linear
    layer through a flatten repeats the channel mask over the spatial positions. Networks must
    be ``nn.Sequential`` (hidden layer = a Linear/Conv followed by an activation)."""

    name = "redo"

    def __init__(self, tau: float, period: int, batch_fn: Callable[[], Inputs | None] | None):
        self.tau, self.period, self.batch_fn = tau, period, batch_fn
        self.recycled = 0

    def attach(self, nets: dict[str, nn.Module], opt: torch.optim.Optimizer) -> None:
        super().attach(nets, opt)
        for name, net in nets.items():
            if not isinstance(net, nn.Sequential):
                raise ConfigError(f"redo needs nn.Sequential networks; '{name}' is {type(net).__name__}")

    def after_step(self, step: int) -> None:
        if step % self.period or self.batch_fn is None:
            return
        batch = self.batch_fn()
        if batch is None:
            return
        for net in self.nets.values():
            # attach checked that every network is an nn.Sequential
            self.recycled += recycle_dormant(cast(nn.Sequential, net), batch, self.tau, self.opt)

    def metrics(self) -> dict[str, float]:
        return {"interventions/redo_recycled": self.recycled}

    def state_dict(self) -> dict:
        return {"recycled": self.recycled}

    def load_state_dict(self, state: dict) -> None:
        self.recycled = state["recycled"]


@torch.no_grad()
def recycle_dormant(net: nn.Sequential, batch: Inputs, tau: float, opt: torch.optim.Optimizer | None) -> int:
    """One ReDo pass over ``net`` (see :class:`ReDo`); returns the number of recycled units."""
    with ActivationCapture(net) as cap:
        run_network(net, batch)
    children = list(net.named_children())
    names = [n for n, _ in children]
    total = 0
    for layer, (_, _, post) in cap.records.items():
        if layer not in names:
            continue
        i = names.index(layer)
        incoming = children[i][1]
        outgoing = cast("nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d | None",  # a WEIGHT_TYPES module or None
                        next((m for _, m in children[i + 1:] if isinstance(m, WEIGHT_TYPES)), None))
        if not isinstance(incoming, WEIGHT_TYPES) or outgoing is None:
            continue
        mask = M.dormant_mask(post, tau)
        n = int(mask.sum())
        if not n:
            continue
        total += n
        fresh = fresh_copy(incoming)
        incoming.weight[mask] = fresh.weight[mask]
        if opt is not None:
            reset_optimizer_state(opt, incoming.weight, mask)
        if incoming.bias is not None:
            incoming.bias[mask] = 0.0
            if opt is not None:
                reset_optimizer_state(opt, incoming.bias, mask)
        in_features = outgoing.weight.shape[1]
        col_mask = mask.repeat_interleave(in_features // mask.numel()) if in_features != mask.numel() else mask
        out_mask = torch.zeros_like(outgoing.weight, dtype=torch.bool)
        out_mask[:, col_mask] = True
        outgoing.weight[out_mask] = 0.0
        if opt is not None:
            reset_optimizer_state(opt, outgoing.weight, out_mask)
    return total


class ShrinkPerturb(Intervention):
    """Shrink and perturb (Ash & Adams 2020): theta <- shrink * theta + perturb * theta_fresh, with
    theta_fresh a new draw of the initialisation. Periodic (``period`` steps; BBF: 0.5 / 0.5) or,
    with period 1, the soft per-update form (e.g. 0.999999 / 1e-6)."""

    def __init__(self, name: str, period: int, shrink: float, perturb: float):
        self.name, self.period, self.shrink, self.perturb = name, period, shrink, perturb

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if step % self.period:
            return
        for net in self.nets.values():
            fresh = fresh_copy(net)
            for p, q in zip(net.parameters(), fresh.parameters()):
                p.mul_(self.shrink).add_(q, alpha=self.perturb)


class L2Init(Intervention):
    """L2-init (Kumar, Marklund, Van Roy 2023): loss + coef * ||theta - theta_0||^2, as the gradient
    2 coef (theta - theta_0) added before every optimiser step."""

    name = "l2_init"

    def __init__(self, coef: float):
        self.coef = coef

    def attach(self, nets: dict[str, nn.Module], opt: torch.optim.Optimizer) -> None:
        super().attach(nets, opt)
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.initial = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        for p, p0 in zip(self.params, self.initial):
            if p.grad is not None:
                p.grad.add_(p - p0, alpha=2 * self.coef)

    def state_dict(self) -> dict:
        return {"initial": self.initial}

    def load_state_dict(self, state: dict) -> None:
        for p0, saved in zip(self.initial, state["initial"], strict=True):
            p0.copy_(saved)


class HardReset(Intervention):
    """Hard reset (Nikishin et al. 2022): every ``period`` steps re-initialise the last ``layers``
    parameterised layers (0: every layer) and reset their optimiser state."""

    name = "reset"

    def __init__(self, period: int, layers: int):
        self.period, self.layers = period, layers

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if step % self.period:
            return
        for net in self.nets.values():
            layers = [m for _, m in weight_layers(net)]
            for module in layers[-self.layers:] if self.layers else layers:
                fresh = fresh_copy(module)
                for p, q in zip(module.parameters(recurse=False), fresh.parameters(recurse=False)):
                    p.copy_(q)
                    reset_optimizer_state(self.opt, p)


#: name -> a factory of the intervention from the settings (and the agent's inspection batch, for ReDo).
#: Adding an intervention: a class above, one entry here, its settings in InterventionConfig and
#: configs/interventions.yaml.
REGISTRY: dict[str, Callable[[InterventionConfig, Callable[[], Inputs | None]], Intervention]] = {
    "nap": lambda c, batch: NormalizeAndProject(c.nap_scale_decay),
    "layernorm_wd": lambda c, batch: LayerNormWeightDecay(c.weight_decay),
    "rewarm": lambda c, batch: ELRRewarming(c.rewarm_period, c.rewarm_warmup, c.rewarm_min_factor,
                                            Cusum(c.cusum_threshold, c.cusum_drift)),
    "redo": lambda c, batch: ReDo(c.redo_tau, c.redo_period, batch),
    "shrink_perturb": lambda c, batch: ShrinkPerturb("shrink_perturb", c.sp_period, c.sp_shrink, c.sp_perturb),
    "soft_shrink_perturb": lambda c, batch: ShrinkPerturb("soft_shrink_perturb", 1, c.soft_sp_shrink,
                                                          c.soft_sp_perturb),
    "l2_init": lambda c, batch: L2Init(c.l2_init_coef),
    "reset": lambda c, batch: HardReset(c.reset_period, c.reset_layers),
}
#: interventions that insert normalisation layers (at most one of them per agent)
NORMALISING = ("nap", "layernorm_wd")


def parse_use(use: str) -> list[str]:
    names = [n.strip() for n in use.split(",") if n.strip()]
    for n in names:
        if n not in REGISTRY:
            raise ConfigError(f"unknown intervention '{n}'; valid interventions: {', '.join(REGISTRY)}")
    if len({n for n in names if n in NORMALISING}) > 1:
        raise ConfigError(f"{' and '.join(NORMALISING)} both insert normalisation layers: pick one")
    if len(set(names)) != len(names):
        raise ConfigError(f"intervention listed twice in '{use}'")
    return names


class Interventions:
    """The interventions of one agent, composed in the order of ``cfg.use``.

    The agent calls :meth:`prepare` on each network before building optimisers,
    :meth:`attach` once with its networks and optimisers, and :meth:`observe_loss` with each
    minibatch loss. One instance of each intervention is made per optimiser, acting on the
    networks whose parameters that optimiser holds, counting that optimiser's steps.
    """

    def __init__(self, cfg: InterventionConfig, batch_fn: Callable[[], Inputs | None] | None = None):
        self.cfg = cfg
        self.names = parse_use(cfg.use)
        self.batch_fn = batch_fn
        self.active: list[Intervention] = []
        self.steps: dict[int, int] = {}

    @staticmethod
    def available() -> list[str]:
        return list(REGISTRY)

    def _make(self, name: str) -> Intervention:
        return REGISTRY[name](self.cfg, lambda: self.batch_fn() if self.batch_fn else None)

    def prepare(self, net: nn.Module) -> nn.Module:
        for name in self.names:
            net = self._make(name).prepare(net)
        return net

    def attach(self, networks: dict[str, nn.Module], optimizers: list[torch.optim.Optimizer]) -> None:
        for opt in optimizers:
            held = {id(p) for g in opt.param_groups for p in g["params"]}
            nets = {k: v for k, v in networks.items() if any(id(p) in held for p in v.parameters())}
            made = []
            for name in self.names:
                iv = self._make(name)
                iv.attach(nets, opt)
                made.append(iv)
            self.active += made
            self.steps[id(opt)] = 0

            def before(o: torch.optim.Optimizer, a: Any, k: Any, made: list[Intervention] = made) -> None:
                self._before(o, made)

            def after(o: torch.optim.Optimizer, a: Any, k: Any, made: list[Intervention] = made) -> None:
                self._after(o, made)

            opt.register_step_pre_hook(before)
            opt.register_step_post_hook(after)

    def _before(self, opt: torch.optim.Optimizer, made: list[Intervention]) -> None:
        for iv in made:
            iv.before_step(self.steps[id(opt)] + 1)

    def _after(self, opt: torch.optim.Optimizer, made: list[Intervention]) -> None:
        self.steps[id(opt)] += 1
        for iv in made:
            iv.after_step(self.steps[id(opt)])

    def observe_loss(self, value: float) -> None:
        for iv in self.active:
            iv.observe_loss(value)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for iv in self.active:
            for key, value in iv.metrics().items():
                out[key] = out.get(key, 0) + value
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps.values()), "active": [iv.state_dict() for iv in self.active]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in zip(list(self.steps), state["steps"], strict=True):
            self.steps[key] = value
        for iv, s in zip(self.active, state["active"], strict=True):
            iv.load_state_dict(s)
