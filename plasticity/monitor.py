"""The plasticity monitor: diagnostics for any set of networks and optimisers, on a schedule.

Usage in any training loop::

    monitor = PlasticityMonitor({"actor": actor}, [optimizer], cfg, probe=obs_batch)
    for it in range(n):
        diagnose = monitor.due(it)
        monitor.track_updates(diagnose)      # per-step update/grad norms during this iteration
        ...train...
        if diagnose:
            writer.log(monitor.collect())    # {"plasticity/<metric>/<network>/<layer>": value}

On a fixed probe batch (``plasticity/...``), every activation layer gets dead/dormant/zombie
fractions and the pre-activation feature norm, and every layer whose flattened features
satisfy n >= d gets the ranks of :func:`plasticity.metrics.rank_metrics`. The PFO paper
measures the same quantities on the current training batch instead, at the start and at the
end of each update; with ``batch`` the monitor does that too (``batch_start/...`` and
``batch_end/...``, the official code's ``batch/start`` and ``batch/end``), for agents that
name their training batch (:meth:`agents.base.Agent.current_batch`). Every parameterised layer gets its
weight norm and, averaged over the optimiser steps of the tracked iteration, its update
norm, update-to-weight ratio and gradient norm (as the optimiser saw it, after clipping),
plus the nominal effective learning rate. Between two diagnostics steps: the change of
each layer's ReLU activation pattern (Delta_A) and normalised feature kernel (Delta_C) on
the first ``kernel_samples`` probe inputs, and each network's output churn. Optionally
(``hessian``; costly) the top Hessian eigenvalue of a loss the agent provides.

Sequence models (inputs are named (B, T, ...) tensors, ``net(**inputs)``): activations are (B, T, D)
token sequences and count each token as a sample (:mod:`plasticity.hooks`), so ranks are those of the
(B*T, D) token features and Delta_A / Delta_C use the first ``kernel_samples`` tokens; padding tokens
count like any other there. Networks with attention layers of :mod:`agents.transformer`
(``SelfAttention``, ``CrossAttention``) also get, per attention layer (named after its module, e.g.
``transformer.blocks.0.attn``) and per head ``h<i>``, the mean attention entropy
(``attn_entropy/<network>/<layer>/h<i>``, :func:`plasticity.metrics.attention_entropy`) and the mean
share of attention on the first key, the "attention sink" (``attn_sink/.../h<i>``,
:func:`plasticity.metrics.attention_sink_share`), and their means over heads
(``attn_entropy/<network>/<layer>``, ``attn_sink/<network>/<layer>``). Only those networks run their
diagnostic forward under :func:`agents.transformer.record_attention` (explicit softmax instead of SDPA:
the same outputs, so churn is unaffected; the probabilities of every layer, (B, H, Tq, Tk), are held
until the forward ends). Padding does not count: queries are weighed by the inputs' ``mask``
(per timestep, (B, T); expanded to the layer's tokens when its query length is a multiple of T,
otherwise every query counts), queries without any key (cross-attention on an empty memory) are left
out, and the sink is the first *valid* key of each sequence (the first token after left padding; for
cross-attention, the first memory token that ``memory_mask`` keeps).
"""
from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, cast

import torch
from torch import Tensor, nn

from configs import param
from plasticity import metrics as M
from plasticity.hooks import ActivationCapture, Inputs, input_count, map_inputs, parameterised_layers, run_network

ADAPTIVE_OPTIMISERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad,
                       torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam)


@dataclass
class DiagnosticsConfig:
    """When and how the plasticity diagnostics run."""
    enabled: bool = param("Compute plasticity diagnostics at all")
    interval: int = param("Run diagnostics every this many iterations (updates of the agent)", min=1)
    probe_size: int = param("Observations in the fixed probe batch, or sequences for sequence models (ranks need "
                            "probe_size >= layer width; a sequence model's tokens count: probe_size x tokens)",
                            min=1)
    dormant_tau: float = param("tau of the tau-dormant ratio (Sokar et al. 2023)", min=0.0)
    srank_delta: float = param("delta of srank (Kumar et al. 2021)", min=0.0, max=1.0)
    tanh_dead_std: float = param("A tanh/sigmoid unit is dead when its std on the probe batch is below this", min=0.0)
    kernel_samples: int = param("Probe inputs used for Delta_A / Delta_C (the kernel is samples x samples)", min=2)
    probe: bool = param("Measure units and ranks on the fixed probe batch collected by the initial policy "
                        "(plasticity/...; Delta_A, Delta_C and churn need it)")
    batch: bool = param("Also measure them on the current training batch at the start and at the end of each "
                        "diagnosed update, as the PFO code does (batch_start/..., batch_end/...)")
    batch_samples: int = param("At most this many samples of the training batch for batch_start/batch_end "
                               "(evenly spaced when the batch is larger; ranks need at least the layer's width)",
                               min=1)
    hessian: bool = param("Also estimate the top Hessian eigenvalue of the agent's loss (costly)")
    hessian_iterations: int = param("Power-iteration steps for the Hessian eigenvalue", min=1)

    @classmethod
    def defaults(cls, **overrides: Any) -> DiagnosticsConfig:
        """The toolkit's defaults for any PyTorch loop (:data:`DIAGNOSTICS_DEFAULTS`), with overrides.

        The suite runners do not use these: their values come from ``configs/<suite>.yaml``.
        """
        from configs import build_section
        return build_section(cls, {**DIAGNOSTICS_DEFAULTS, **overrides}, "diagnostics")


#: :meth:`DiagnosticsConfig.defaults`: the toolkit's own settings, independent of any suite's YAML
DIAGNOSTICS_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "interval": 10,  # every 10 iterations (+3.4% of PPO Atari training time, results/BENCHMARKS.md)
    "probe_size": 1024,  # one PFO batch (8 envs x 128 steps); >= 512 features, so a 512-unit layer's ranks exist
    "dormant_tau": 0.025,  # Sokar et al. 2023 (ReDo), Atari
    "srank_delta": 0.01,  # Kumar et al. 2021; PFO code
    "tanh_dead_std": 1e-3,  # PFO code: a tanh unit is dead when its std < 1e-3
    "kernel_samples": 256,  # Delta_A / Delta_C on 256 probe inputs (a 256 x 256 kernel per layer)
    "probe": True,  # the fixed probe batch (Delta_A, Delta_C and churn need it)
    "batch": True,  # PFO code: ranks and dead units on the current batch, start and end of each update
    "batch_samples": 512,  # what the rank of a 512-unit layer needs (n >= d); the PFO code uses the whole batch
    "hessian": False,  # off: a double-backward pass per power-iteration step
    "hessian_iterations": 20,  # power-iteration steps
}


def attention_layers(net: nn.Module) -> dict[str, nn.Module]:
    """The attention layers of :mod:`agents.transformer` in ``net``, by module name ({} for other networks).

    Without :mod:`agents.transformer` imported no network holds one: the toolkit does not import it.
    """
    transformer = sys.modules.get("agents.transformer")
    if transformer is None:
        return {}
    kinds = (transformer.SelfAttention, transformer.CrossAttention)
    return {name: m for name, m in net.named_modules() if isinstance(m, kinds)}


def per_token(mask: Tensor | None, batch: int, tokens: int) -> Tensor | None:
    """A per-timestep mask (B, T) for ``tokens`` tokens per sequence (each timestep's tokens in turn), (B, tokens)
    bool; None without a mask or when ``tokens`` is not a multiple of T."""
    if mask is None or mask.ndim != 2 or mask.shape[0] != batch or tokens % mask.shape[1]:
        return None
    return mask.bool().repeat_interleave(tokens // mask.shape[1], dim=1)


class PlasticityMonitor:
    """Computes the diagnostics of :mod:`plasticity.metrics` for named networks."""

    def __init__(self, networks: dict[str, nn.Module], optimizers: list[torch.optim.Optimizer],
                 cfg: DiagnosticsConfig, probe: Inputs | None = None,
                 loss_fn: Callable[[], Tensor] | None = None):
        self.networks = networks
        self.cfg = cfg
        self.probe = probe
        self.loss_fn = loss_fn  # for the Hessian: a loss with a graph through the networks' parameters
        self.previous: dict[str, Tensor] = {}  # last diagnostics step's patterns, kernels and outputs
        self._layers = {(net, layer): params for net, module in networks.items()
                        for layer, params in parameterised_layers(module).items()}
        owner = {id(p): key for key, params in self._layers.items() for p in params}
        # optimiser and param-group index of each layer, for the learning rate in the ELR (by index:
        # an optimiser's load_state_dict replaces its group dicts)
        self._group: dict[tuple[str, str], tuple[torch.optim.Optimizer, int]] = {}
        for opt in optimizers:
            for index, group in enumerate(opt.param_groups):
                for p in group["params"]:
                    if id(p) in owner:
                        self._group.setdefault(owner[id(p)], (opt, index))
        self._attention = {name: attention_layers(net) for name, net in networks.items()}
        # per optimiser: the parameters of the layers it steps, in one flat list, and each one's layer
        # index, so that a tracked step costs a few fused kernels rather than a loop over tensors
        self._tracked: dict[int, tuple[list[tuple[str, str]], list[nn.Parameter], Tensor]] = {}
        for opt in optimizers:
            keys = [key for key, (o, _) in self._group.items() if o is opt]
            params = [p for key in keys for p in self._layers[key]]
            if params:
                layer_index = torch.tensor([i for i, key in enumerate(keys) for _ in self._layers[key]],
                                           device=params[0].device)
                self._tracked[id(opt)] = (keys, params, layer_index)
        self._tracking = False
        self.always_track = False
        # per optimiser: parameters before the step (buffers reused until collect)
        self._before: dict[int, list[Tensor]] = {}
        self._pending: set[int] = set()  # optimisers between a tracked pre-step and its post-step
        self._sums: dict[tuple[int, str], Tensor] = {}  # (optimiser, metric) -> per-layer sums over steps
        self._counts: dict[tuple[int, str], int] = defaultdict(int)
        for opt in optimizers:
            opt.register_step_pre_hook(self._pre_step)
            opt.register_step_post_hook(self._post_step)

    @classmethod
    def attach(cls, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, probe: Tensor | None = None,
               name: str = "model", **overrides: Any) -> "PlasticityMonitor":
        """For a plain training loop: the suite's default settings, update tracking always on.

        >>> monitor = PlasticityMonitor.attach(model, optimizer, probe=x_probe)
        >>> ...train...; print(monitor.collect())
        """
        monitor = cls({name: model}, [optimizer] if optimizer is not None else [],
                      DiagnosticsConfig.defaults(**overrides), probe=probe)
        monitor.always_track = True
        monitor.track_updates(True)
        return monitor

    # -- schedule ----------------------------------------------------------------------------
    def due(self, iteration: int) -> bool:
        return self.cfg.enabled and iteration % self.cfg.interval == 0

    @property
    def tracking(self) -> bool:
        return self._tracking

    def track_updates(self, on: bool) -> None:
        """Record update and gradient norms of every optimiser step until collect()."""
        self._tracking = on

    # -- optimiser hooks ---------------------------------------------------------------------
    def _pre_step(self, opt, args, kwargs) -> None:
        if not self._tracking or id(opt) not in self._tracked:
            return
        keys, params, index = self._tracked[id(opt)]
        if id(opt) not in self._before:
            self._before[id(opt)] = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(self._before[id(opt)], [p.detach() for p in params])
        self._pending.add(id(opt))
        with_grad = [i for i, p in enumerate(params) if p.grad is not None]  # layers without any count as 0
        grads = cast(list[Tensor], [params[i].grad for i in with_grad])  # all set: with_grad filtered them
        self._accumulate(opt, "grad_norm", M.group_norms(grads, index[with_grad], len(keys)))

    def _post_step(self, opt, args, kwargs) -> None:
        if id(opt) not in self._pending:
            return
        self._pending.discard(id(opt))
        keys, params, index = self._tracked[id(opt)]
        before = self._before[id(opt)]
        weight = M.group_norms(before, index, len(keys))
        torch._foreach_sub_(before, [p.detach() for p in params])  # in place: before - after
        update = M.group_norms(before, index, len(keys))
        self._accumulate(opt, "update_norm", update)
        self._accumulate(opt, "update_ratio", torch.where(weight > 0, update / weight, torch.zeros_like(update)))

    def _accumulate(self, opt: torch.optim.Optimizer, metric: str, per_layer: Tensor) -> None:
        key = (id(opt), metric)
        self._sums[key] = self._sums[key] + per_layer if key in self._sums else per_layer
        self._counts[key] += 1

    def update_metrics(self) -> dict[str, float]:
        """Per-layer gradient norm, update norm and update/weight ratio, averaged over the tracked steps."""
        out: dict[str, float] = {}
        for (opt_id, metric), total in self._sums.items():
            keys = self._tracked[opt_id][0]
            for (net, layer), value in zip(keys, (total / self._counts[(opt_id, metric)]).tolist()):
                out[f"plasticity/{metric}/{net}/{layer}"] = value
        return out

    # -- metrics -----------------------------------------------------------------------------
    @torch.no_grad()
    def layer_metrics(self, inputs: Inputs, namespace: str,
                      compare: bool = True) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Per activation layer of every network on ``inputs``: dead, dormant and zombie fractions,
        pre-activation feature norm, and the ranks of the post-activation features (layers with
        n >= d), named ``<namespace>/<metric>/<network>/<layer>``; for networks with attention layers, their
        attention entropy and sink share per head. With ``compare``, also returns what the probe's
        comparisons between diagnostics steps need (outputs, activation patterns, kernels)."""
        cfg, k = self.cfg, self.cfg.kernel_samples
        out: dict[str, float] = {}
        current: dict[str, Tensor] = {}
        for net_name, net in self.networks.items():
            attention = self._attention[net_name]
            training = net.training
            net.eval()  # the network as a function: no dropout noise in the units, ranks or churn
            try:
                with ActivationCapture(net) as cap, ExitStack() as stack:
                    maps = None
                    if attention:  # only transformers pay for the explicit softmax
                        maps = stack.enter_context(sys.modules["agents.transformer"].record_attention(net)).maps
                    output = run_network(net, inputs)
            finally:
                net.train(training)
            if maps is not None:
                out.update(self._attention_metrics(maps, attention, inputs, namespace, net_name))
                del maps  # every layer's (B, H, Tq, Tk) probabilities
            if isinstance(output, tuple):
                output = output[0]
            if compare:
                current[f"output/{net_name}"] = output.detach().float()
            dead_units, total_units = 0, 0
            for layer, (kind, pre, post) in cap.records.items():
                key = f"{net_name}/{layer}"
                if kind != "features":  # a block's output (hooks.Features): signed features, no dead units
                    dead = M.dead_mask(post, kind, cfg.tanh_dead_std)
                    dead_units += int(dead.sum())
                    total_units += dead.numel()
                    out[f"{namespace}/dead_frac/{key}"] = float(dead.float().mean())
                out[f"{namespace}/dormant_frac/{key}"] = M.dormant_fraction(post, cfg.dormant_tau)
                if kind in ("relu", "leaky_relu"):
                    out[f"{namespace}/zombie_frac/{key}"] = M.zombie_fraction(pre)
                out[f"{namespace}/feature_norm/{key}"] = M.feature_norm(pre)
                ranks = M.rank_metrics(post, cfg.srank_delta)
                for name, value in (ranks or {}).items():
                    out[f"{namespace}/{name}/{key}"] = float(value)
                if compare:
                    current[f"pattern/{key}"] = pre[:k] > 0
                    current[f"kernel/{key}"] = M.feature_kernel(post[:k])
            if total_units:
                out[f"{namespace}/dead_frac/{net_name}/all"] = dead_units / total_units
        return out, current

    @staticmethod
    def _attention_metrics(maps: dict[str, Tensor], layers: dict[str, nn.Module], inputs: Inputs,
                           namespace: str, net_name: str) -> dict[str, float]:
        """Per-head attention entropy and sink share of the recorded probabilities, and their head means."""
        step_mask = inputs.get("mask") if isinstance(inputs, Mapping) else None
        memory_mask = inputs.get("memory_mask") if isinstance(inputs, Mapping) else None
        out: dict[str, float] = {}
        transformer = sys.modules["agents.transformer"]
        for layer, module in layers.items():
            probs = maps.get(cast(str, module.record_name))  # the name record_attention stored it under
            if probs is None:  # not called in this forward
                continue
            b, _, tq, tk = probs.shape
            queries = probs[:, 0].sum(-1) > 0.5  # (B, Tq): rows with a key (not cross-attention on no memory)
            query_mask = per_token(step_mask, b, tq)
            if query_mask is not None:
                queries = queries & query_mask.to(queries.device)
            if isinstance(module, transformer.CrossAttention):
                keys = memory_mask.bool() if memory_mask is not None and memory_mask.shape == (b, tk) else None
            else:
                keys = per_token(step_mask, b, tk)
            for metric, per_head in (("attn_entropy", M.attention_entropy(probs, queries)),
                                     ("attn_sink", M.attention_sink_share(probs, queries, keys))):
                key = f"{namespace}/{metric}/{net_name}/{layer}"
                for head, value in enumerate(per_head.tolist()):
                    out[f"{key}/h{head}"] = value
                out[key] = float(per_head.mean())
        return out

    @torch.no_grad()
    def activation_metrics(self) -> dict[str, float]:
        """:meth:`layer_metrics` on the fixed probe (``plasticity/``), and the changes since the last call:
        Delta_A (activation patterns), Delta_C (feature kernels) and output churn."""
        if self.probe is None or not self.cfg.probe:
            return {}
        out, current = self.layer_metrics(self.probe, "plasticity")
        for name, now in current.items():
            before = self.previous.get(name)
            if before is None or before.shape != now.shape:
                continue
            kind, key = name.split("/", 1)
            if kind == "pattern":
                out[f"plasticity/pattern_change/{key}"] = float((before != now).float().mean())
            elif kind == "kernel":
                out[f"plasticity/kernel_change/{key}"] = M.kernel_change(before, now)
            else:
                out[f"plasticity/churn/{key}"] = M.output_churn(before, now)
                if now.shape[-1] > 1:
                    out[f"plasticity/greedy_churn/{key}"] = M.greedy_churn(before, now)
        self.previous = current
        return out

    def batch_metrics(self, batch: Inputs, when: str) -> dict[str, float]:
        """:meth:`layer_metrics` on the current training batch (``when``: "start" or "end" of the update),
        on at most ``batch_samples`` evenly spaced samples (observations, or sequences), named
        ``batch_<when>/...``."""
        n = input_count(batch)
        if n > self.cfg.batch_samples:
            index = torch.linspace(0, n - 1, self.cfg.batch_samples).long()
            batch = map_inputs(lambda x: x[index.to(x.device)], batch)
        return self.layer_metrics(batch, f"batch_{when}", compare=False)[0]

    def hessian_metrics(self) -> dict[str, float]:
        if not (self.cfg.hessian and self.loss_fn is not None):
            return {}
        out = {}
        for net_name, net in self.networks.items():
            params = [p for p in net.parameters() if p.requires_grad]
            eig = M.hessian_top_eigenvalue(self.loss_fn(), params, self.cfg.hessian_iterations,
                                           torch.Generator().manual_seed(0))
            out[f"plasticity/hessian_top/{net_name}"] = eig
        return out

    def weight_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (net, layer), params in self._layers.items():
            norm = M.tensor_norm(params)
            out[f"plasticity/weight_norm/{net}/{layer}"] = norm
            if (net, layer) in self._group:
                opt, index = self._group[(net, layer)]
                out[f"plasticity/elr/{net}/{layer}"] = M.effective_lr(
                    float(opt.param_groups[index]["lr"]), norm, isinstance(opt, ADAPTIVE_OPTIMISERS))
        for net, module in self.networks.items():
            out[f"plasticity/weight_norm/{net}/all"] = M.tensor_norm(list(module.parameters()))
        return out

    def collect(self) -> dict[str, float]:
        """All diagnostics now; resets the per-step accumulators and stops tracking."""
        out = self.activation_metrics()
        out.update(self.weight_metrics())
        out.update(self.hessian_metrics())
        out.update(self.update_metrics())
        self._sums.clear()
        self._counts.clear()
        self._before.clear()  # the pre-step copies are only held while steps are tracked
        self._pending.clear()
        self._tracking = self.always_track
        return out

    def state_dict(self) -> dict[str, Any]:
        """What the next diagnostics step compares against (Delta_A, Delta_C, churn)."""
        return {"previous": {k: v.cpu() for k, v in self.previous.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = next(p.device for net in self.networks.values() for p in net.parameters())
        self.previous = {k: v.to(device) for k, v in state["previous"].items()}
