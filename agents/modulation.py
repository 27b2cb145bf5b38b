"""Modulations of a frozen transformer and L2M's pool of keys that selects one per input (Schmied et al. 2023,
"Learning to Modulate pre-trained Models in RL"; official code github ``ml-jku/L2M``; ``../shared/papers/l2m.md``).

Read top to bottom:

1. :class:`Modulation`: ``slots`` independent changes of every block of a
   :class:`agents.transformer.CausalTransformer`, one chosen per sample by :meth:`Modulation.select` before
   each forward. :meth:`Modulation.attach` swaps the blocks' modules for thin wrappers that ask the
   modulation (the frozen weights stay where they were):
   ``attn.qkv`` (query, key and value in one ``Linear``), ``mlp.fc`` (the feed-forward up-projection) and
   ``mlp.act`` (its activation).

   * :class:`LoRA`: per slot and layer, low-rank updates ``(alpha / r) x A B`` of the query, the value and the
     feed-forward up-projection (L2M-LoRA: rank 8, alpha = 2 r, so the scaling is 2; A Kaiming-uniform, B zero,
     so a new LoRA leaves the model unchanged). The official code puts its feed-forward update on the output of
     the up-projection (a 4d -> 4d low-rank map, ``MLPIA3`` in ``multiprompt_decision_transformer_model.py``);
     here it is the standard LoRA of the up-projection's weight (d -> 4d), as the paper and the issue describe it.
   * :class:`IA3`: per slot and layer, vectors that scale the key, the value and the feed-forward activation
     (L2M-(IA)^3, ``ia3.py``), initialised to ones (the model unchanged).

   One slot serves every sample (the shared-LoRA baseline), one slot per task (the oracle, given the task id), or
   one slot per key of the pool (L2M).
2. :class:`KeyPool`: L2M's keys (``pool_size`` vectors in the embedding width, U(-1, 1)); the query of an input is
   the masked mean of its embedded state tokens at the input layer; similarity is the cosine; from the second
   task on, while training, the similarities are reweighted by the normalised inverse usage counts of the keys
   (``((cos + 1) / 2) * w``, ``w`` proportional to ``1 / (count + 1e-6)``, fixed within a task) so that a new task
   prefers keys little used before; top-1 selection. Counts are a running mean over training batches of each
   key's share of the batch (``l2p.py``'s ``counts += (c - counts) / n``, never reset). The pull term of the loss
   is the mean cosine between each query and its selected key (``reduce_sim``; the loss subtracts 0.5 x it).
3. :class:`PromptPool`: L2P, L2M's prompt-pool baseline, on the same keys: the selected prompts join the tokens
   at every block.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------
# 1. Modulations
# ---------------------------------------------------------------------------------------


class Modulation(nn.Module):
    """``slots`` changes of each of ``n_layer`` blocks; :meth:`select` says which one each sample uses."""

    def __init__(self, slots: int, n_layer: int, d_model: int, mlp_ratio: int = 4):
        super().__init__()
        self.slots, self.n_layer, self.d_model, self.d_ff = slots, n_layer, d_model, mlp_ratio * d_model
        self.selected: Tensor | None = None

    def select(self, slots: Tensor) -> None:
        """The slot of every sample of the next forward passes, (B,) long."""
        if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= self.slots):
            raise ValueError(f"slots must lie in 0..{self.slots - 1}, got {slots.tolist()}")
        self.selected = slots

    def _slots(self, x: Tensor) -> Tensor:
        if self.selected is None or len(self.selected) != len(x):
            raise RuntimeError("Modulation.select(slots) with one slot per sample must come before the forward")
        return self.selected

    def attach(self, transformer: nn.Module) -> None:
        """Route ``transformer``'s blocks (``blocks.<i>.attn.qkv``, ``mlp.fc``, ``mlp.act``) through this."""
        blocks = list(transformer.blocks)  # type: ignore[arg-type]
        if len(blocks) != self.n_layer:
            raise ValueError(f"a modulation of {self.n_layer} layers cannot attach to {len(blocks)} blocks")
        for i, block in enumerate(blocks):
            block.attn.qkv = _Routed(block.attn.qkv, self, i, "qkv")
            block.mlp.fc = _Routed(block.mlp.fc, self, i, "fc")
            block.mlp.act = _Routed(block.mlp.act, self, i, "act")

    # what a modulation changes; by default nothing
    def qkv(self, layer: int, x: Tensor, out: Tensor) -> Tensor:
        return out

    def fc(self, layer: int, x: Tensor, out: Tensor) -> Tensor:
        return out

    def act(self, layer: int, x: Tensor, out: Tensor) -> Tensor:
        return out


class _Routed(nn.Module):
    """A frozen module whose output the modulation changes (the module keeps its name: ``<name>.base``)."""

    def __init__(self, base: nn.Module, modulation: Modulation, layer: int, kind: str):
        super().__init__()
        self.base = base
        self._modulation = [modulation]  # a list: not registered as a submodule of every block
        self.layer, self.kind = layer, kind

    def forward(self, x: Tensor) -> Tensor:
        modulation = self._modulation[0]
        return getattr(modulation, self.kind)(self.layer, x, self.base(x))


def _low_rank(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per sample its own low-rank map: x (B, T, i), a (B, i, r), b (B, r, o) -> (B, T, o)."""
    return torch.einsum("btr,bro->bto", torch.einsum("bti,bir->btr", x, a), b)


class LoRA(Modulation):
    """Low-rank updates of the query, the value and the feed-forward up-projection, per slot and layer."""

    def __init__(self, slots: int, n_layer: int, d_model: int, rank: int = 8, alpha: float | None = None,
                 mlp_ratio: int = 4):
        super().__init__(slots, n_layer, d_model, mlp_ratio)
        self.rank = rank
        self.scaling = (2.0 * rank if alpha is None else alpha) / rank  # L2M: lora_alpha = 2 * rank
        d, f = d_model, self.d_ff
        self.a_q, self.b_q = self._pair(d, d)
        self.a_v, self.b_v = self._pair(d, d)
        self.a_fc, self.b_fc = self._pair(d, f)

    def _pair(self, fan_in: int, fan_out: int) -> tuple[nn.Parameter, nn.Parameter]:
        a = torch.empty(self.slots, self.n_layer, fan_in, self.rank)
        for s in range(self.slots):  # Kaiming-uniform per matrix, as nn.Linear / loralib (a = sqrt(5))
            for layer in range(self.n_layer):
                nn.init.kaiming_uniform_(a[s, layer].T, a=math.sqrt(5))
        return nn.Parameter(a), nn.Parameter(torch.zeros(self.slots, self.n_layer, self.rank, fan_out))

    def qkv(self, layer: int, x: Tensor, out: Tensor) -> Tensor:
        s = self._slots(x)
        dq = _low_rank(x, self.a_q[s, layer], self.b_q[s, layer]) * self.scaling
        dv = _low_rank(x, self.a_v[s, layer], self.b_v[s, layer]) * self.scaling
        return out + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)

    def fc(self, layer: int, x: Tensor, out: Tensor) -> Tensor:
        s = self._slots(x)
        return out + _low_rank(x, self.a_fc[s, layer], self.b_fc[s, layer]) * self.scaling


class IA3(Modulation):
    """(IA)^3: learned scales of the key, the value and the feed-forward activation, per slot and layer."""

    def __init__(self, slots: int, n_layer: int, d_model: int, mlp_ratio: int = 4):
        super().__init__(slots, n_layer, d_model, mlp_ratio)
        self.l_k = nn.Parameter(torch.ones(slots, n_layer, d_model))
        self.l_v = nn.Parameter(torch.ones(slots, n_layer, d_model))
        self.l_ff = nn.Parameter(torch.ones(slots, n_layer, self.d_ff))

    def qkv(self, layer: int, x: Tensor, out: Tensor) -> Tensor:
        s = self._slots(x)
        scale = torch.cat([torch.ones_like(self.l_k[s, layer]), self.l_k[s, layer], self.l_v[s, layer]], dim=-1)
        return out * scale[:, None, :]

    def act(self, layer: int, x: Tensor, out: Tensor) -> Tensor:
        return out * self.l_ff[self._slots(x), layer][:, None, :]


MODULATIONS = {"lora": LoRA, "ia3": IA3}


def make_modulation(kind: str, slots: int, n_layer: int, d_model: int, rank: int, **kwargs: Any) -> Modulation:
    """``lora`` (with ``rank``) or ``ia3``."""
    if kind == "lora":
        return LoRA(slots, n_layer, d_model, rank, **kwargs)
    if kind == "ia3":
        return IA3(slots, n_layer, d_model, **kwargs)
    raise ValueError(f"unknown modulation {kind!r}; valid: {', '.join(MODULATIONS)}")


# ---------------------------------------------------------------------------------------
# 2. L2M's pool of keys
# ---------------------------------------------------------------------------------------


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over axis 1 of x (B, T, D) where mask (B, T) is True; an all-False row gives 0."""
    w = mask.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


def penalised_similarity(cos: Tensor, counts: Tensor) -> Tensor:
    """L2M's usage penalty: ``((cos + 1) / 2) * w`` with ``w = (1 / (counts + 1e-6))`` normalised to sum 1."""
    inverse = 1.0 / (counts + 1e-6)
    return (cos + 1.0) / 2.0 * (inverse / inverse.sum())


class KeyPool(nn.Module):
    """``pool_size`` keys in the embedding width; each input selects the one nearest its query (top-1)."""

    counts: Tensor
    batches: Tensor
    task_counts: Tensor
    task: Tensor
    usage: Tensor

    def __init__(self, pool_size: int, d_model: int, max_tasks: int = 10):
        super().__init__()
        self.keys = nn.Parameter(torch.empty(pool_size, d_model).uniform_(-1.0, 1.0))
        self.register_buffer("counts", torch.zeros(pool_size))  # running mean of each key's share of a batch
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("task_counts", torch.zeros(pool_size))  # the counts when the current task began
        self.register_buffer("task", torch.zeros((), dtype=torch.long))
        #: per task, how often training inputs selected each key (its own key: the most selected)
        self.register_buffer("usage", torch.zeros(max_tasks, pool_size))
        #: when a list, every selection outside training is appended to it (:meth:`KeyPool.own_key_share`)
        self.recorded: list[Tensor] | None = None

    def start_task(self, task: int) -> None:
        """A new task: the usage penalty (from task 1 on) uses the counts of the tasks before it."""
        self.task.fill_(task)
        self.task_counts.copy_(self.counts)

    def cosine(self, query: Tensor) -> Tensor:
        """(B, D) queries -> (B, pool_size) cosine similarities (fp32)."""
        return F.normalize(query.float(), dim=-1) @ F.normalize(self.keys.float(), dim=-1).T

    def select(self, query: Tensor, top_k: int = 1) -> tuple[Tensor, Tensor]:
        """(the ``top_k`` selected keys per input (B, top_k), the pull term: per input the summed cosine to its
        keys, averaged over the batch, as L2P's ``reduce_sim``). While training, the usage penalty applies from
        task 1 on and the counts are updated (the selections of an input count once each)."""
        cos = self.cosine(query)
        score = cos
        if self.training and int(self.task) > 0 and int(self.batches) > 0:  # L2M: from task 1 on
            score = penalised_similarity(cos, self.task_counts)
        chosen = score.topk(top_k, dim=-1).indices
        if self.training:
            hits = torch.bincount(chosen.flatten(), minlength=len(self.keys)).float()
            self.batches.add_(1)
            self.counts.add_((hits / chosen.numel() - self.counts) / self.batches)
            self.usage[int(self.task)] += hits
        elif self.recorded is not None:
            self.recorded.append(chosen[:, 0].detach())
        return chosen, cos.gather(1, chosen).sum(1).mean()

    def own_key_share(self, chosen: Tensor, task: int) -> float:
        """Key-selection accuracy: the share of ``chosen`` keys that are ``task``'s own (its most selected key in
        training)."""
        return float((chosen == self.usage[task].argmax()).float().mean())


# ---------------------------------------------------------------------------------------
# 3. L2P's prompt pool (a baseline of L2M)
# ---------------------------------------------------------------------------------------


class PromptPool(nn.Module):
    """L2P (Wang et al. 2022, "Learning to Prompt for Continual Learning") as L2M runs it (``l2p.yaml``):
    ``pool_size`` prompts of ``length`` tokens per layer, each with a key of a :class:`KeyPool`; the ``top_k``
    prompts nearest an input's query (with the usage penalty) are put in front of the hidden states at every
    block (deep prompt tuning: prompts attend to prompts only, the sequence's tokens to the prompts and causally
    to each other; no token positions) and cut off after it. Prompts initialised U(-1, 1) as the keys."""

    def __init__(self, pool_size: int, n_layer: int, length: int, d_model: int, top_k: int, max_tasks: int = 10):
        super().__init__()
        if top_k > pool_size:
            raise ValueError(f"top_k={top_k} prompts from a pool of {pool_size}")
        self.top_k, self.n_layer = top_k, n_layer
        self.pool = KeyPool(pool_size, d_model, max_tasks)
        self.prompts = nn.Parameter(torch.empty(pool_size, n_layer, length, d_model).uniform_(-1.0, 1.0))
        self.selected: Tensor | None = None

    def select(self, query: Tensor) -> Tensor:
        """Choose every input's prompts for the next forward passes; returns the pull term."""
        self.selected, pull = self.pool.select(query, self.top_k)
        return pull

    def tokens(self, layer: int) -> Tensor:
        """The selected prompts' tokens at ``layer``, (B, top_k x length, d)."""
        if self.selected is None:
            raise RuntimeError("PromptPool.select(query) must come before the forward")
        return self.prompts[self.selected, layer].flatten(1, 2)

    def attach(self, transformer: nn.Module) -> None:
        """Run ``transformer``'s blocks (``blocks.<i>``, an ``nn.ModuleList``) with the prompts."""
        blocks = transformer.get_submodule("blocks")
        assert isinstance(blocks, nn.ModuleList)
        if len(blocks) != self.n_layer:
            raise ValueError(f"prompts of {self.n_layer} layers cannot attach to {len(blocks)} blocks")
        for i in range(self.n_layer):
            blocks[i] = _Prompted(blocks[i], self, i)


class _Prompted(nn.Module):
    """A frozen block run with its layer's prompts in front of the new tokens (with a KV cache, the prompts'
    keys and values are recomputed each pass and left out of the cache: they see only each other)."""

    def __init__(self, block: nn.Module, prompts: PromptPool, layer: int):
        super().__init__()
        self.block, self.layer = block, layer
        self._prompts = [prompts]  # a list: not registered under every block

    def forward(self, x: Tensor, past_k: Tensor, past_v: Tensor, mask: Tensor,
                memory_kv: Any) -> tuple[Tensor, Tensor, Tensor]:
        p = self._prompts[0].tokens(self.layer).to(x.dtype)
        b, t, n, m = x.shape[0], x.shape[1], p.shape[1], past_k.shape[2]
        zeros, ones = mask.new_zeros, mask.new_ones
        # key columns: the cached tokens, the prompts, the new tokens (the block puts the cache first)
        top = torch.cat([zeros(b, 1, n, m), ones(b, 1, n, n), zeros(b, 1, n, t)], dim=-1)  # prompts see prompts
        bottom = torch.cat([mask[..., :m], ones(b, 1, t, n), mask[..., m:]], dim=-1)  # tokens: the prompts too
        h, k, v = self.block(torch.cat([p, x], dim=1), past_k, past_v, torch.cat([top, bottom], dim=2), memory_kv)
        keep = [*range(m), *range(m + n, m + n + t)]
        return h[:, n:], k[:, :, keep], v[:, :, keep]
