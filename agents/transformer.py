"""A GPT-style causal transformer with a KV cache, and the Decision Transformer built on it.

Read top to bottom:

1. :class:`TransformerConfig`, the blocks (:class:`MLP`, :class:`SelfAttention`,
   :class:`CrossAttention`, :class:`Block`) and :class:`CausalTransformer`: pre-LayerNorm GPT-2
   blocks, causal self-attention through ``F.scaled_dot_product_attention``, an optional
   cross-attention sublayer per block (RA-DT) over a separate "memory" token sequence.
2. :class:`KVCache` and ``CausalTransformer.step``: acting one token group at a time.
3. :func:`record_attention`: the attention probabilities of a forward pass, for diagnostics.
4. :class:`TokenEmbedding`: (rtg, state, action, reward, timestep) -> interleaved tokens.
5. :class:`DecisionTransformer` (DT, Algorithm Distillation, RA-DT), its :func:`loss`, and the
   rollout API (:class:`Rollout`, ``start`` / ``act`` / ``observe`` / ``reset_envs``).

Design decisions
----------------
* **Positions.** Every token gets the embedding of its environment timestep (as in DT), added in
  :class:`TokenEmbedding`. On top, the transformer adds a *token position* embedding
  (``positions="learned"``, default; ``"sinusoidal"``; or ``"none"`` as in the original DT). A
  token's position is its index among the *valid* tokens of its own sequence: padding does not
  count, and in a rollout each environment counts from its own last reset, so left-padded training
  windows, per-environment resets and the KV cache agree. Positions never exceed ``max_tokens - 1``.
* **Context limit: trim, do not slide.** ``step`` refuses to grow a sequence beyond ``max_tokens``
  (``ValueError``). Sliding a KV cache (dropping the oldest keys) is *not* the same as attending to
  the window: keys of layers >= 1 carry information from the dropped tokens, and the positions would
  no longer start at 0. Instead :meth:`CausalTransformer.trim` keeps the last ``keep`` tokens of the
  chosen environments and *recomputes* their keys/values from the stored input tokens, with
  positions from 0. After a trim, outputs equal a full forward pass on the kept window exactly (the
  training distribution). ``DecisionTransformer.act`` trims whole timesteps automatically; with
  ``keep_steps = context - 1`` (default) every step attends to exactly the last ``context``
  timesteps, as in DT's evaluation; a smaller ``keep_steps`` recomputes less often.
* **What the cache holds** (per environment, right-aligned: the valid tokens of environment b are
  the last ``lengths[b]`` columns): per-layer self-attention keys/values (B, H, n, dh); the input
  tokens (B, n, D) (needed to recompute on a trim); ``lengths`` (B,); and, when the model has
  cross-attention, the per-layer keys/values of the memory (B, H, M, dh), computed once per memory
  by :meth:`CausalTransformer.set_memory`, with the memory's key-padding mask (B, M).
* **Caches are values.** No method writes into a tensor of a cache it is given: ``step``, ``trim``,
  ``reset`` and ``set_memory`` return a new :class:`KVCache` (new tensors where anything changed,
  shared read-only tensors elsewhere). Branching a rollout (``a = step(x, c); b = step(y, c)``) is
  therefore safe without copying, and two caches never influence each other.
* **Memory changes.** Replacing the memory mid-rollout keeps the self-attention keys of earlier
  tokens, which were computed with the old memory; ``set_memory(..., recompute=True)`` rebuilds them
  so that the outputs equal a full forward pass with the new memory.
* **Empty memory.** A row of the memory mask with no valid token (nothing retrieved yet) makes the
  cross-attention sublayer add exactly 0, the same as calling without memory.
* MLP activations are ``nn.GELU`` modules (``blocks.{i}.mlp.act``, named ``blocks.{i}.mlp.fc`` by
  :mod:`plasticity.hooks`), with (B, T, 4D) outputs: the monitor reads them as token sequences.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------
# Masks and attention
# ---------------------------------------------------------------------------------------


def causal_mask(past_valid: Tensor, new_valid: Tensor) -> Tensor:
    """(B, 1, Tn, n + Tn) bool mask: new token i sees valid past keys and valid new keys j <= i.

    A token always sees itself, so no row is empty (padding queries give finite, ignored outputs).
    """
    tn = new_valid.shape[1]
    n = past_valid.shape[1]
    tri = torch.ones(tn, tn, dtype=torch.bool, device=new_valid.device).tril()
    new = tri[None] & new_valid[:, None, :]
    new = new | torch.eye(tn, dtype=torch.bool, device=new_valid.device)[None]
    past = past_valid[:, None, :].expand(-1, tn, n)
    return torch.cat([past, new], dim=2)[:, None]


def positions_from_mask(valid: Tensor, start: Tensor | None = None) -> Tensor:
    """Position of each token among the valid tokens of its row (counting from ``start``), (B, T) long.

    Invalid tokens get the position of the next valid one (clamped to 0): they are ignored anyway.
    """
    pos = valid.long().cumsum(1) - 1
    if start is not None:
        pos = pos + start[:, None]
    return pos.clamp(min=0)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float,
           record: dict[str, Tensor] | None = None, name: str = "") -> Tensor:
    """softmax(q k^T / sqrt(dh)) v with a bool mask (True = attend), (B, H, Tq, dh).

    Through SDPA; when ``record`` is a dict, explicitly, storing the probabilities under ``name``.
    """
    if record is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    record[name] = probs.detach()
    return F.dropout(probs, dropout_p) @ v


def sinusoidal_table(n: int, d: int) -> Tensor:
    """Vaswani et al. 2017 position table (n, d): sin on even, cos on odd channels."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return table.float()


# ---------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------


@dataclass
class TransformerConfig:
    n_layer: int = 3
    d_model: int = 128
    n_head: int = 4
    max_tokens: int = 200           # longest sequence (context) in tokens
    mlp_ratio: int = 4
    embd_dropout: float = 0.1       # on the input tokens
    attn_dropout: float = 0.1       # on attention probabilities
    resid_dropout: float = 0.1      # on each sublayer's output before the residual sum
    cross_attention: bool = False   # RA-DT: a cross-attention sublayer in every block
    positions: str = "learned"      # token positions: "learned", "sinusoidal" or "none"


class MLP(nn.Module):
    """fc -> GELU (a module, for the activation hooks) -> proj -> dropout."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.act = nn.GELU()
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.resid_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class _Attention(nn.Module):
    """Shared by self- and cross-attention: head splitting, output projection, recording."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_head == 0, "d_model must be divisible by n_head"
        self.n_head = cfg.n_head
        self.attn_dropout = cfg.attn_dropout
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.resid_dropout)
        self.record: dict[str, Tensor] | None = None  # set by ``record_attention``
        self.record_name = ""

    def heads(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, H, T, dh)."""
        b, t, d = x.shape
        return x.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)

    def merge(self, y: Tensor) -> Tensor:
        """(B, H, T, dh) -> (B, T, D), projected and dropped out."""
        b, h, t, dh = y.shape
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, t, h * dh)))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        p = self.attn_dropout if self.training else 0.0
        return attend(q, k, v, mask, p, self.record, self.record_name)


class SelfAttention(_Attention):
    """Causal multi-head self-attention; new tokens attend to cached keys/values and to each other."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)

    def forward(self, x: Tensor, past_k: Tensor, past_v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, Tn, D), past (B, H, n, dh), mask (B, 1, Tn, n + Tn) -> (out, all keys, all values)."""
        q, k, v = (self.heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        return self.merge(self._attend(q, k, v, mask)), k, v


class CrossAttention(_Attention):
    """Queries from the stream, keys/values from the memory tokens (computed once per memory)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg)
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """(B, M, D) memory tokens -> keys, values (B, H, M, dh)."""
        k, v = self.kv(memory).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, memory_mask: Tensor) -> Tensor:
        """x (B, T, D), memory keys/values (B, H, M, dh), memory_mask (B, M) -> (B, T, D); 0 where no memory."""
        any_valid = memory_mask.any(dim=1)
        safe = memory_mask | ~any_valid[:, None]  # empty rows attend everywhere, then are zeroed
        mask = safe[:, None, None, :].expand(-1, 1, x.shape[1], -1)
        y = self._attend(self.heads(self.q(x)), k, v, mask)
        if self.record is not None:
            self.record[self.record_name] = self.record[self.record_name] * any_valid[:, None, None, None]
        return self.merge(y) * any_valid[:, None, None].to(x.dtype)


class Block(nn.Module):
    """Pre-LN block: x + attn(ln1 x); [x + cross(ln_cross x, memory)]; x + mlp(ln2 x)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln_cross: nn.LayerNorm | None = nn.LayerNorm(cfg.d_model) if cfg.cross_attention else None
        self.cross: CrossAttention | None = CrossAttention(cfg) if cfg.cross_attention else None
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, past_k: Tensor, past_v: Tensor, mask: Tensor,
                memory_kv: tuple[Tensor, Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        a, k, v = self.attn(self.ln1(x), past_k, past_v, mask)
        x = x + a
        if self.cross is not None and self.ln_cross is not None and memory_kv is not None:
            x = x + self.cross(self.ln_cross(x), *memory_kv)
        return x + self.mlp(self.ln2(x)), k, v


# ---------------------------------------------------------------------------------------
# The transformer and its KV cache
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KVCache:
    """State of B sequences stepping together; immutable (every method returns a new one).

    Right-aligned: the valid tokens of sequence b are the last ``lengths[b]`` of the n columns.
    """

    keys: tuple[Tensor, ...]            # per layer (B, H, n, dh)
    values: tuple[Tensor, ...]          # per layer (B, H, n, dh)
    inputs: Tensor                      # (B, n, D) input tokens, to recompute on a trim
    lengths: Tensor                     # (B,) long, valid tokens per sequence
    memory_kv: tuple[tuple[Tensor, Tensor], ...] | None = None  # per layer (B, H, M, dh) keys, values
    memory_mask: Tensor | None = None   # (B, M) bool, True = a real memory token

    @property
    def n(self) -> int:
        return self.inputs.shape[1]

    def valid(self) -> Tensor:
        """(B, n) bool: which columns hold a valid token of their sequence."""
        cols = torch.arange(self.n, device=self.lengths.device)
        return cols[None, :] >= (self.n - self.lengths)[:, None]


class CausalTransformer(nn.Module):
    """GPT-2-style decoder on token embeddings: (B, T, D) -> (B, T, D), final LayerNorm applied."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.pos: nn.Embedding | None = None
        if cfg.positions == "learned":
            self.pos = nn.Embedding(cfg.max_tokens, cfg.d_model)
        elif cfg.positions == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(cfg.max_tokens, cfg.d_model), persistent=False)
        elif cfg.positions != "none":
            raise ValueError(f"positions must be 'learned', 'sinusoidal' or 'none', not {cfg.positions!r}")
        self.drop = nn.Dropout(cfg.embd_dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2 n_layer)
            if name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def position_embedding(self, positions: Tensor) -> Tensor | None:
        """(B, T) long -> (B, T, D), or None without token positions."""
        if self.pos is not None:
            return self.pos(positions)
        if self.cfg.positions == "sinusoidal":
            table: Tensor = self.pos_table  # type: ignore[assignment]
            return table[positions]
        return None

    def memory_kv(self, memory: Tensor | None) -> tuple[tuple[Tensor, Tensor], ...] | None:
        """Per-layer cross-attention keys/values of the memory (B, M, D), or None."""
        if memory is None or not self.cfg.cross_attention:
            return None
        blocks = [b for b in self.blocks if isinstance(b, Block)]
        return tuple(b.cross.memory_kv(memory) for b in blocks if b.cross is not None)

    def _run(self, x: Tensor, positions: Tensor, mask: Tensor, past: KVCache | None,
             memory_kv: Sequence[tuple[Tensor, Tensor]] | None,
             memory_mask: Tensor | None) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """The blocks on new tokens x (B, Tn, D): (hidden (B, Tn, D), per-layer keys, values incl. the past)."""
        if self.cfg.positions != "none" and positions.numel() > 0 and int(positions.max()) >= self.cfg.max_tokens:
            raise ValueError(f"a token position exceeds max_tokens={self.cfg.max_tokens}: trim or reset first")
        pe = self.position_embedding(positions)
        h = self.drop(x if pe is None else x + pe)
        b, _, d = x.shape
        empty = h.new_zeros(b, self.cfg.n_head, 0, d // self.cfg.n_head)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            pk = past.keys[i] if past is not None else empty
            pv = past.values[i] if past is not None else empty
            mkv = None
            if memory_kv is not None and memory_mask is not None:
                mkv = (*memory_kv[i], memory_mask)
            h, k, v = block(h, pk, pv, mask, mkv)
            keys.append(k)
            values.append(v)
        return self.ln_f(h), keys, values

    def forward(self, x: Tensor, mask: Tensor | None = None, memory: Tensor | None = None,
                memory_mask: Tensor | None = None) -> Tensor:
        """x (B, T, D) tokens; mask (B, T) True = valid (padding ignored as keys, any side);
        memory (B, M, D) with memory_mask (B, M) (all valid when None) -> (B, T, D)."""
        b, t, _ = x.shape
        valid = mask.bool() if mask is not None else torch.ones(b, t, dtype=torch.bool, device=x.device)
        memory_kv = self.memory_kv(memory)
        if memory is not None and memory_mask is None:
            memory_mask = torch.ones(memory.shape[:2], dtype=torch.bool, device=x.device)
        no_past = valid[:, :0]
        out, _, _ = self._run(x, positions_from_mask(valid), causal_mask(no_past, valid), None,
                              memory_kv, memory_mask)
        return out

    # -- the KV cache -----------------------------------------------------------------

    def init_cache(self, batch_size: int, memory: Tensor | None = None,
                   memory_mask: Tensor | None = None) -> KVCache:
        """An empty cache for ``batch_size`` sequences, with the memory's keys/values if given."""
        p = next(self.parameters())
        d, h = self.cfg.d_model, self.cfg.n_head
        empty = p.new_zeros(batch_size, h, 0, d // h)
        cache = KVCache(keys=(empty,) * self.cfg.n_layer, values=(empty,) * self.cfg.n_layer,
                        inputs=p.new_zeros(batch_size, 0, d),
                        lengths=torch.zeros(batch_size, dtype=torch.long, device=p.device))
        return self.set_memory(cache, memory, memory_mask)

    def set_memory(self, cache: KVCache, memory: Tensor | None, memory_mask: Tensor | None = None,
                   recompute: bool = False) -> KVCache:
        """A cache with new memory keys/values (memory (B, M, D); None removes it).

        With ``recompute`` the cached tokens are re-run with the new memory (exact); without, their
        self-attention keys stay those computed with the old memory (cheap, approximate).
        """
        if memory is not None and memory_mask is None:
            memory_mask = torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
        new = replace(cache, memory_kv=self.memory_kv(memory),
                      memory_mask=memory_mask.bool() if memory is not None and memory_mask is not None else None)
        if recompute and new.n > 0:
            return self._recompute(new, new.lengths, torch.ones_like(new.lengths, dtype=torch.bool))
        return new

    def step(self, x_new: Tensor, cache: KVCache) -> tuple[Tensor, KVCache]:
        """Append x_new (B, Tn, D) to every sequence: (outputs (B, Tn, D), new cache).

        The new tokens attend to the cached ones and causally to each other; equal to the last Tn
        outputs of ``forward`` on each sequence's valid tokens since its last reset/trim. Raises
        ``ValueError`` if a sequence would exceed ``max_tokens`` (call :meth:`trim` or :meth:`reset`).
        """
        cache = self._compact(cache)
        tn = x_new.shape[1]
        if cache.lengths.numel() and int(cache.lengths.max()) + tn > self.cfg.max_tokens:
            raise ValueError(f"KV cache would exceed max_tokens={self.cfg.max_tokens}: trim or reset first")
        new_valid = torch.ones(x_new.shape[:2], dtype=torch.bool, device=x_new.device)
        positions = cache.lengths[:, None] + torch.arange(tn, device=x_new.device)[None]
        mask = causal_mask(cache.valid(), new_valid)
        out, keys, values = self._run(x_new, positions, mask, cache, cache.memory_kv, cache.memory_mask)
        return out, replace(cache, keys=tuple(keys), values=tuple(values),
                            inputs=torch.cat([cache.inputs, x_new], dim=1), lengths=cache.lengths + tn)

    def reset(self, cache: KVCache, envs: Tensor) -> KVCache:
        """Empty the sequences where ``envs`` (B,) bool is True (their memory stays)."""
        return replace(cache, lengths=torch.where(envs.to(cache.lengths.device), 0, cache.lengths))

    def trim(self, cache: KVCache, keep: int, envs: Tensor | None = None) -> KVCache:
        """Keep only the last ``keep`` tokens of the chosen sequences (all when ``envs`` is None) and
        recompute their keys/values from the stored inputs, positions from 0 (exact window)."""
        envs = torch.ones_like(cache.lengths, dtype=torch.bool) if envs is None else envs.bool()
        envs = envs & (cache.lengths > keep)
        if not bool(envs.any()):
            return cache
        return self._recompute(cache, torch.where(envs, keep, cache.lengths), envs)

    def _compact(self, cache: KVCache) -> KVCache:
        """Drop the leading columns no sequence uses any more (a view, no copy)."""
        n_used = int(cache.lengths.max()) if cache.lengths.numel() else 0
        if n_used == cache.n:
            return cache
        cut = cache.n - n_used
        return replace(cache, keys=tuple(k[:, :, cut:] for k in cache.keys),
                       values=tuple(v[:, :, cut:] for v in cache.values), inputs=cache.inputs[:, cut:])

    def _recompute(self, cache: KVCache, lengths: Tensor, envs: Tensor) -> KVCache:
        """Re-run the stored inputs of sequences ``envs`` with new ``lengths``; others keep their keys."""
        cache = replace(cache, lengths=lengths)
        idx = envs.nonzero().squeeze(1)
        valid = cache.valid()[idx]
        memory_kv = None
        memory_mask = None
        if cache.memory_kv is not None and cache.memory_mask is not None:
            memory_kv = [(k[idx], v[idx]) for k, v in cache.memory_kv]
            memory_mask = cache.memory_mask[idx]
        _, keys, values = self._run(cache.inputs[idx], positions_from_mask(valid),
                                    causal_mask(valid[:, :0], valid), None, memory_kv, memory_mask)
        new_keys = tuple(k.index_copy(0, idx, nk) for k, nk in zip(cache.keys, keys))
        new_values = tuple(v.index_copy(0, idx, nv) for v, nv in zip(cache.values, values))
        return self._compact(replace(cache, keys=new_keys, values=new_values))


# ---------------------------------------------------------------------------------------
# Attention probabilities for diagnostics
# ---------------------------------------------------------------------------------------


@dataclass
class AttentionRecord:
    """Attention probabilities of the latest call per layer, e.g. maps['blocks.0.attn'] (B, H, Tq, Tk)."""

    maps: dict[str, Tensor]


@contextmanager
def record_attention(model: nn.Module) -> Iterator[AttentionRecord]:
    """Within the block, attention layers of ``model`` compute softmax(QK^T/sqrt(d)) explicitly
    (same outputs as SDPA) and record the probabilities, keyed by module name.

    >>> with record_attention(model) as rec:
    ...     model(x)
    >>> rec.maps["blocks.0.attn"].shape  # (B, H, Tq, Tk); cross-attention: "blocks.0.cross"
    """
    rec = AttentionRecord(maps={})
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, _Attention)]
    try:
        for name, m in layers:
            m.record, m.record_name = rec.maps, name.removeprefix("transformer.")
        yield rec
    finally:
        for _, m in layers:
            m.record = None


# ---------------------------------------------------------------------------------------
# Decision-Transformer tokens
# ---------------------------------------------------------------------------------------

TOKEN_KINDS = ("rtg", "state", "action", "reward")


class TokenEmbedding(nn.Module):
    """Per-timestep tokens of the given kinds, interleaved: (B, T) steps -> (B, T * len(kinds), D).

    Each kind has its own embedding (Linear for rtg/state/reward, Embedding for discrete actions);
    every token adds the embedding of its timestep; a LayerNorm follows (DT's ``embed_ln``).
    DT: kinds (rtg, state, action); AD: (state, action, reward).
    """

    def __init__(self, state_dim: int, n_actions: int, d_model: int, kinds: Sequence[str],
                 max_timestep: int = 1000):
        super().__init__()
        unknown = set(kinds) - set(TOKEN_KINDS)
        if unknown or len(set(kinds)) != len(kinds):
            raise ValueError(f"token kinds must be distinct, from {TOKEN_KINDS}; got {tuple(kinds)}")
        self.kinds = tuple(kinds)
        self.max_timestep = max_timestep
        self.state = nn.Linear(state_dim, d_model)
        self.action = nn.Embedding(n_actions, d_model)
        self.rtg = nn.Linear(1, d_model) if "rtg" in kinds else None
        self.reward = nn.Linear(1, d_model) if "reward" in kinds else None
        self.timestep = nn.Embedding(max_timestep, d_model)
        self.ln = nn.LayerNorm(d_model)

    def embed(self, kinds: Sequence[str], states: Tensor | None, actions: Tensor | None,
              rewards: Tensor | None, rtg: Tensor | None, timesteps: Tensor) -> Tensor:
        """Tokens of ``kinds`` (a subset, in order) for (B, T) steps -> (B, T * len(kinds), D)."""
        parts = []
        for kind in kinds:
            if kind == "state":
                assert states is not None, "states are needed"
                e = self.state(states.float())
            elif kind == "action":
                assert actions is not None, "actions are needed"
                e = self.action(actions.long())
            elif kind == "rtg":
                assert rtg is not None and self.rtg is not None, "returns-to-go are needed"
                e = self.rtg(rtg.float().unsqueeze(-1))
            else:
                assert rewards is not None and self.reward is not None, "rewards are needed"
                e = self.reward(rewards.float().unsqueeze(-1))
            parts.append(e)
        t = timesteps.long().clamp(0, self.max_timestep - 1)
        x = torch.stack(parts, dim=2) + self.timestep(t)[:, :, None]   # (B, T, K, D)
        return self.ln(x.flatten(1, 2))

    def forward(self, states: Tensor, actions: Tensor, rewards: Tensor | None, rtg: Tensor | None,
                timesteps: Tensor) -> Tensor:
        """states (B, T, ds), actions (B, T), rewards (B, T), rtg (B, T), timesteps (B, T) -> (B, T*K, D)."""
        return self.embed(self.kinds, states, actions, rewards, rtg, timesteps)


def token_mask(mask: Tensor | None, k: int) -> Tensor | None:
    """Per-timestep mask (B, T) -> per-token mask (B, T * k)."""
    return None if mask is None else mask.bool().repeat_interleave(k, dim=1)


# ---------------------------------------------------------------------------------------
# The Decision Transformer
# ---------------------------------------------------------------------------------------


def loss(logits: Tensor, actions: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of action logits (B, T, A) against actions (B, T) over valid steps (mask (B, T))."""
    ce = F.cross_entropy(logits.flatten(0, 1), actions.long().flatten(), reduction="none")
    if mask is None:
        return ce.mean()
    m = mask.flatten().to(ce.dtype)
    return (ce * m).sum() / m.sum().clamp(min=1.0)


@dataclass(frozen=True)
class Rollout:
    """State of B environments acting together: the KV cache and the latest state tokens' timesteps."""

    cache: KVCache
    timesteps: Tensor        # (B,) timestep of the latest state token
    awaiting_action: bool    # True after ``act``, until ``observe``


class DecisionTransformer(nn.Module):
    """DT / AD / RA-DT over discrete actions; the action of step t is read from the state token of t.

    kinds: tokens per timestep, e.g. ("rtg", "state", "action") (DT) or ("state", "action", "reward")
    (AD, with a cross-episode context). ``cross_attention=True`` adds RA-DT's cross-attention over
    memory tokens made by :meth:`embed_memory` (own embeddings and LayerNorm, ``memory_kinds``).
    """

    def __init__(self, state_dim: int, n_actions: int, kinds: Sequence[str] = ("rtg", "state", "action"),
                 context: int = 50, n_layer: int = 3, d_model: int = 128, n_head: int = 4,
                 max_timestep: int = 1000, dropout: float = 0.1, attn_dropout: float | None = None,
                 positions: str = "learned", cross_attention: bool = False, memory_kinds: Sequence[str] | None = None,
                 memory_len: int = 100):
        super().__init__()
        kinds = tuple(kinds)
        if "state" not in kinds or "action" not in kinds or kinds.index("action") < kinds.index("state"):
            raise ValueError("kinds must hold 'state' and, after it, 'action'")
        self.kinds = kinds
        self.n_actions = n_actions
        self.context = context
        self.state_index = kinds.index("state")
        self.cfg = TransformerConfig(n_layer=n_layer, d_model=d_model, n_head=n_head, max_tokens=context * len(kinds),
                                     embd_dropout=dropout, resid_dropout=dropout,
                                     attn_dropout=dropout if attn_dropout is None else attn_dropout,
                                     cross_attention=cross_attention, positions=positions)
        self.embed = TokenEmbedding(state_dim, n_actions, d_model, kinds, max_timestep)
        self.transformer = CausalTransformer(self.cfg)
        self.head = nn.Linear(d_model, n_actions)
        self.memory_embed: TokenEmbedding | None = None
        self.memory_pos: nn.Embedding | None = None
        if cross_attention:
            self.memory_kinds = tuple(memory_kinds) if memory_kinds is not None else kinds
            self.memory_embed = TokenEmbedding(state_dim, n_actions, d_model, self.memory_kinds, max_timestep)
            self.memory_pos = nn.Embedding(memory_len * len(self.memory_kinds), d_model)
            nn.init.normal_(self.memory_pos.weight, std=0.02)

    # -- memory tokens (RA-DT) ----------------------------------------------------------

    def embed_memory(self, states: Tensor, actions: Tensor, rewards: Tensor | None, rtg: Tensor | None,
                     timesteps: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Retrieved sub-trajectories -> (memory (B, M, D), memory_mask (B, M)), M = L * len(memory_kinds).

        Inputs are (B, L, ...) steps, or (B, C, L, ...) for C chunks (each chunk gets positions from 0;
        then M = C * L * K). Own embeddings, timestep and position embeddings, and LayerNorm.
        """
        assert self.memory_embed is not None and self.memory_pos is not None, "the model has no cross-attention"
        b = states.shape[0]
        chunked = timesteps.dim() == 3

        def flat(x: Tensor | None) -> Tensor | None:
            return x.flatten(0, 1) if x is not None and chunked else x

        x = self.memory_embed(flat(states), flat(actions), flat(rewards), flat(rtg), flat(timesteps))  # type: ignore[arg-type]
        x = x + self.memory_pos(torch.arange(x.shape[1], device=x.device))[None]
        k = len(self.memory_kinds)
        if mask is None:
            mask = torch.ones(timesteps.shape, dtype=torch.bool, device=x.device)
        m = token_mask(flat(mask), k)
        assert m is not None
        return x.reshape(b, -1, x.shape[-1]), m.reshape(b, -1)

    # -- training -----------------------------------------------------------------------

    def forward(self, states: Tensor, actions: Tensor, rewards: Tensor | None, rtg: Tensor | None,
                timesteps: Tensor, mask: Tensor | None = None, memory: Tensor | None = None,
                memory_mask: Tensor | None = None) -> Tensor:
        """states (B, T, ds), actions (B, T) long, rewards (B, T), rtg (B, T) (None if unused),
        timesteps (B, T), mask (B, T) valid steps, memory (B, M, D) from ``embed_memory`` -> logits (B, T, A).

        The logits of step t come from the state token of t, which (causally) does not see a_t.
        """
        x = self.embed(states, actions, rewards, rtg, timesteps)
        h = self.transformer(x, token_mask(mask, len(self.kinds)), memory, memory_mask)
        h = h.view(h.shape[0], -1, len(self.kinds), h.shape[-1])[:, :, self.state_index]
        return self.head(h)

    # -- rollouts -----------------------------------------------------------------------

    def start(self, batch_size: int, memory: Tensor | None = None, memory_mask: Tensor | None = None) -> Rollout:
        """An empty rollout for ``batch_size`` environments (memory from ``embed_memory``, optional)."""
        cache = self.transformer.init_cache(batch_size, memory, memory_mask)
        return Rollout(cache, torch.zeros(batch_size, dtype=torch.long, device=cache.lengths.device), False)

    def act(self, rollout: Rollout, states: Tensor, timesteps: Tensor, rtg: Tensor | None = None,
            keep_steps: int | None = None) -> tuple[Tensor, Rollout]:
        """Append the tokens up to the state token of a new step: (action logits (B, A), rollout).

        states (B, ds), timesteps (B,), rtg (B,) if the kinds use it. An environment whose context
        would overflow keeps its last ``keep_steps`` (default ``context - 1``) whole steps, recomputed.
        """
        if rollout.awaiting_action:
            raise RuntimeError("call observe() with the chosen action before the next act()")
        k = len(self.kinds)
        keep = self.context - 1 if keep_steps is None else keep_steps
        cache = rollout.cache
        full = cache.lengths + k > self.cfg.max_tokens
        if bool(full.any()):
            cache = self.transformer.trim(cache, keep * k, full)
        pre = self.kinds[: self.state_index + 1]
        x = self.embed.embed(pre, states[:, None], None, None, None if rtg is None else rtg[:, None],
                             timesteps[:, None])
        out, cache = self.transformer.step(x, cache)
        logits = self.head(out[:, -1])
        return logits, Rollout(cache, timesteps.long(), True)

    def observe(self, rollout: Rollout, actions: Tensor, rewards: Tensor | None = None) -> Rollout:
        """Append the tokens after the state token (the chosen action (B,), and the reward (B,) if used)."""
        if not rollout.awaiting_action:
            raise RuntimeError("observe() follows act()")
        post = self.kinds[self.state_index + 1:]
        x = self.embed.embed(post, None, actions[:, None], None if rewards is None else rewards[:, None], None,
                             rollout.timesteps[:, None])
        _, cache = self.transformer.step(x, rollout.cache)
        return Rollout(cache, rollout.timesteps, False)

    def reset_envs(self, rollout: Rollout, envs: Tensor) -> Rollout:
        """Empty the context of environments ``envs`` (B,) bool (DT: at episode ends; AD: rarely)."""
        if rollout.awaiting_action:
            raise RuntimeError("reset between observe() and act()")
        return replace(rollout, cache=self.transformer.reset(rollout.cache, envs))

    def set_memory(self, rollout: Rollout, memory: Tensor | None, memory_mask: Tensor | None = None,
                   recompute: bool = False) -> Rollout:
        """New retrieved memory for the rollout (see ``CausalTransformer.set_memory``)."""
        return replace(rollout, cache=self.transformer.set_memory(rollout.cache, memory, memory_mask, recompute))
