"""Causal sequence backbones for the action models (LRAM, Schmied et al. 2025; ``../shared/papers/lram.md``).

Each maps token embeddings (B, L, D) to outputs (B, L, D) in one parallel pass for training, and steps one
token at a time in rollouts with a state of its own:

* :class:`XLSTMBackbone`: the ``xlstm`` package's ``xLSTMBlockStack`` (mLSTM blocks: conv1d kernel 4, qkv
  block size 4, 4 heads; sLSTM blocks at the paper's positions with 4 heads, conv 4, power-law
  block-dependent bias init and a x1.3 GELU feed-forward, as LRAM's ``xlstm_*.yaml``). Rollouts call its
  ``step`` per token: constant time per step however long the history. sLSTM runs on the ``vanilla``
  back end on CPU and on ``cuda`` where that extension builds (``slstm_backend: auto``).
* :class:`MambaBackbone`: ``mambapy``'s pure-PyTorch Mamba (d_state 16, d_conv 4, expand 2, as LRAM's
  ``mamba_medium.yaml``) with a final RMSNorm; rollouts call its ``step`` with the per-layer caches.
* :class:`TransformerBackbone`: the KV-cached causal transformer of :mod:`agents.transformer` (the
  Decision Transformer of the RA-DT issue) with learned token positions (LRAM's DT: ``global_pos_embds``);
  its context is bounded by ``max_tokens``, so a rollout past it keeps the last ``keep`` tokens and
  recomputes them (:meth:`CausalTransformer.trim`).

States are values: ``step(x, state)`` returns a new state and never changes what the one it was given holds
(the ``xlstm`` step assigns into the dict it is passed and writes into its conv state in place; ``mambapy``'s
assigns into its cache list; the wrappers hand them copies). The Transformer's preallocated cache is the one
shared buffer: a step writes the column just past the given state's tokens, so an earlier state can be stepped
from again (replayed), but two branches from one state overwrite each other's newest column.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from configs import ConfigError
from plasticity.hooks import Features, mark_outputs


class Backbone(nn.Module):
    """(B, L, D) -> (B, L, D) causally; ``step`` for one token per sequence with an explicit state.

    Every block's output passes a :class:`plasticity.hooks.Features` marker (``block_outputs.<i>``) in the
    parallel pass, so the plasticity monitor reports ranks, dormant units and norms of block outputs for every
    backbone alike."""

    def mark_blocks(self, blocks: nn.ModuleList) -> None:
        self.block_outputs = nn.ModuleList([Features() for _ in blocks])
        mark_outputs(blocks, self.block_outputs)

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """All tokens at once (training)."""

    @abstractmethod
    def start(self, batch_size: int) -> Any:
        """The state before any token."""

    @abstractmethod
    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """x (B, D): one new token per sequence -> (output (B, D), new state)."""

    @abstractmethod
    def restart(self, state: Any, rows: Tensor) -> Any:
        """The state with the sequences where ``rows`` (B,) bool is True back at their start."""

    def memory_norms(self, state: Any) -> dict[str, float]:
        """Sizes of the recurrent memory in ``state`` (``<block>/<part>`` -> value; none by default): the
        evaluation logs them after each rollout, so a user sees whether the memory grows past the trained
        context."""
        return {}

    def state_bytes(self, state: Any) -> int:
        """Memory the state holds (the recurrent state, or the KV cache)."""
        return sum(t.numel() * t.element_size() for t in _tensors(state))


def _tensors(state: Any) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors(v)]
    if hasattr(state, "__dataclass_fields__"):
        return [t for name in state.__dataclass_fields__ for t in _tensors(getattr(state, name))]
    return []


def _clone(state: Any) -> Any:
    if isinstance(state, Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {k: _clone(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_clone(v) for v in state)
    return state


#: state entries whose batch axis is not the first: xlstm's sLSTM state is (4 (h, c, n, m), B, D)
BATCH_AXIS = {"slstm_state": 1}


def _zero_rows(state: Any, rows: Tensor, axis: int = 0) -> Any:
    """A copy of a nested state with the batch rows ``rows`` zeroed (batch on ``axis``, or per
    :data:`BATCH_AXIS` for named entries)."""
    if isinstance(state, Tensor):
        shape = [1] * state.dim()
        shape[axis] = -1
        return state * (~rows).to(state.dtype).reshape(shape)
    if isinstance(state, dict):
        return {k: _zero_rows(v, rows, BATCH_AXIS.get(k, axis)) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_zero_rows(v, rows, axis) for v in state)
    return state


# ---------------------------------------------------------------------------------------
# xLSTM
# ---------------------------------------------------------------------------------------

def slstm_positions(ratio: str, num_blocks: int) -> list[int]:
    """Where the sLSTM blocks go for an mLSTM:sLSTM ``ratio``: "1:0" none; "7:1" LRAM's positions (block 1 of
    8; blocks 1, 3 of 12 and 16; 1, 3, 5 of 20: one per 8 blocks, rounded half up, at odd indices); "0:1" all."""
    if ratio == "1:0":
        return []
    if ratio == "0:1":
        return list(range(num_blocks))
    if ratio == "7:1":
        n = max(1, (num_blocks + 4) // 8)
        return [2 * i + 1 for i in range(n) if 2 * i + 1 < num_blocks]
    raise ConfigError(f"lram.ratio must be 1:0 (mLSTM only), 7:1 (sLSTM at LRAM's positions) or 0:1, not {ratio!r}")


def import_xlstm() -> Any:
    try:
        import xlstm
    except ImportError:
        raise ConfigError("the xLSTM backbone needs the xlstm package: pip install 'plasticity-suite[lram]'") from None
    return xlstm


def slstm_backend(choice: str) -> str:
    """``auto``: the CUDA kernel where a GPU is visible, else ``vanilla`` (the only one that runs on CPU)."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "vanilla"
    if choice not in ("vanilla", "cuda"):
        raise ConfigError(f"slstm_backend must be auto, vanilla or cuda, not {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("slstm_backend=cuda needs a CUDA device; use vanilla (or auto) on CPU")
    return choice


class XLSTMBackbone(Backbone):
    def __init__(self, d_model: int, num_blocks: int, context_tokens: int, ratio: str = "1:0",
                 num_heads: int = 4, backend: str = "auto"):
        super().__init__()
        x = import_xlstm()
        mlstm = x.mLSTMBlockConfig(mlstm=x.mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4,
                                                            num_heads=num_heads))
        slstm = x.sLSTMBlockConfig(
            slstm=x.sLSTMLayerConfig(backend=slstm_backend(backend), num_heads=num_heads, conv1d_kernel_size=4,
                                     bias_init="powerlaw_blockdependent"),
            feedforward=x.FeedForwardConfig(proj_factor=1.3, act_fn="gelu"))
        positions = slstm_positions(ratio, num_blocks)
        self.stack = x.xLSTMBlockStack(x.xLSTMBlockStackConfig(
            mlstm_block=mlstm, slstm_block=slstm if positions else None, context_length=context_tokens,
            num_blocks=num_blocks, embedding_dim=d_model, slstm_at=positions))
        self.stack.reset_parameters()
        self.mark_blocks(self.stack.blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.stack(x)

    def start(self, batch_size: int) -> dict[str, dict[str, tuple[Tensor, ...]]]:
        p = next(self.parameters())
        _, state = self.stack.step(p.new_zeros(batch_size, 1, self.stack.config.embedding_dim), None)
        return _zero_rows(state, torch.ones(batch_size, dtype=torch.bool, device=p.device))

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        # xLSTMBlockStack.step assigns into the dict and its conv step writes into conv_state: hand it a copy
        y, new = self.stack.step(x[:, None], _clone(state))
        return y[:, 0], new

    def restart(self, state: Any, rows: Tensor) -> Any:
        return _zero_rows(state, rows)

    def memory_norms(self, state: Any) -> dict[str, float]:
        """Per block, the log norm of the true memory (the stored one times exp of its stabiliser): mLSTM's
        matrix memory ``C`` and normaliser ``n`` (stabiliser m per head), sLSTM's cell ``c`` and normaliser
        ``n`` (m per unit); :func:`plasticity.metrics.scaled_log_norm`, averaged over the batch."""
        from plasticity.metrics import scaled_log_norm
        out = {}
        for name, block in state.items():
            if "mlstm_state" in block:
                c, n, m = block["mlstm_state"]
                out[f"{name}/C_log_norm"], out[f"{name}/n_log_norm"] = scaled_log_norm(c, m), scaled_log_norm(n, m)
            if "slstm_state" in block:
                _, c, n, m = block["slstm_state"]
                out[f"{name}/c_log_norm"], out[f"{name}/n_log_norm"] = scaled_log_norm(c, m), scaled_log_norm(n, m)
        return out


# ---------------------------------------------------------------------------------------
# Mamba
# ---------------------------------------------------------------------------------------

class MambaBackbone(Backbone):
    def __init__(self, d_model: int, n_layers: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        try:
            from mambapy.mamba import Mamba, MambaConfig, RMSNorm
        except ImportError:
            raise ConfigError("the Mamba backbone needs mambapy: pip install 'plasticity-suite[lram]'") from None
        self.config = MambaConfig(d_model=d_model, n_layers=n_layers, d_state=d_state, d_conv=d_conv,
                                  expand_factor=expand)
        self.mamba = Mamba(self.config)
        self.norm_f = RMSNorm(d_model)
        self.mark_blocks(self.mamba.layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm_f(self.mamba(x))

    def start(self, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        p, c = next(self.parameters()), self.config
        return [(p.new_zeros(batch_size, c.d_inner, c.d_state), p.new_zeros(batch_size, c.d_inner, c.d_conv - 1))
                for _ in range(c.n_layers)]

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        y, new = self.mamba.step(x, list(state))  # Mamba.step assigns into the list it is given
        return self.norm_f(y), new

    def restart(self, state: Any, rows: Tensor) -> Any:
        return _zero_rows(state, rows)

    def memory_norms(self, state: Any) -> dict[str, float]:
        """Per layer, the norm of the SSM state h (B, d_inner, d_state), averaged over the batch."""
        from plasticity.metrics import feature_norm
        return {f"layer_{i}/h_norm": feature_norm(h) for i, (h, _) in enumerate(state)}


# ---------------------------------------------------------------------------------------
# Transformer with a preallocated KV cache
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StaticKVCache:
    """Keys and values of every layer preallocated for ``max_tokens`` (L, B, H, N, dh); ``lengths`` (B,)
    valid tokens per sequence (left-aligned: sequence b's tokens are columns 0..lengths[b]-1); ``inputs``
    (B, N, D) the token embeddings, to recompute a window when the cache is full. A step writes one column
    past ``lengths`` in place; a state's valid columns never change (a full cache is cut into a copy)."""
    keys: Tensor
    values: Tensor
    inputs: Tensor
    lengths: Tensor


class TransformerBackbone(Backbone):
    """The causal transformer of :mod:`agents.transformer` (GPT-2 blocks, learned token positions); rollouts
    write each token's keys and values into a preallocated cache and attend with SDPA over its valid columns
    (no copy of the past per step). A sequence whose cache is full keeps its last ``keep_tokens`` tokens,
    recomputed from their embeddings with positions from 0 (the training distribution)."""

    def __init__(self, d_model: int, n_layer: int, n_head: int, context_tokens: int, dropout: float = 0.0,
                 keep_tokens: int = 0):
        super().__init__()
        from agents.transformer import CausalTransformer, TransformerConfig
        if d_model % n_head:
            raise ConfigError(f"n_head={n_head} must divide d_model={d_model}")
        self.transformer = CausalTransformer(TransformerConfig(
            n_layer=n_layer, d_model=d_model, n_head=n_head, max_tokens=context_tokens, embd_dropout=dropout,
            attn_dropout=dropout, resid_dropout=dropout, positions="learned"))
        self.mark_blocks(self.transformer.blocks)
        self.context_tokens = context_tokens
        self.keep_tokens = keep_tokens or context_tokens // 2

    def forward(self, x: Tensor) -> Tensor:
        return self.transformer(x)

    def start(self, batch_size: int) -> StaticKVCache:
        p, cfg = next(self.parameters()), self.transformer.cfg
        shape = (cfg.n_layer, batch_size, cfg.n_head, self.context_tokens, cfg.d_model // cfg.n_head)
        return StaticKVCache(p.new_zeros(shape), p.new_zeros(shape), p.new_zeros(batch_size, self.context_tokens,
                                                                                 cfg.d_model),
                             torch.zeros(batch_size, dtype=torch.long, device=p.device))

    def step(self, x: Tensor, state: StaticKVCache) -> tuple[Tensor, StaticKVCache]:
        full = state.lengths >= self.context_tokens
        if bool(full.any()):
            state = self._keep_last(state, full)
        # the new token goes into column lengths[b], in place: no copy of the past, and the tokens the given
        # state holds (columns < lengths) are left as they were, so it can still be stepped from again
        keys, values, inputs = state.keys, state.values, state.inputs
        rows = torch.arange(len(x), device=x.device)
        pos = state.lengths
        inputs[rows, pos] = x
        used = int(pos.max()) + 1  # attend over the columns in use only, not the whole buffer
        attend_to = (torch.arange(used, device=x.device)[None] <= pos[:, None])[:, None, None]

        def write(i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
            keys[i, rows, :, pos], values[i, rows, :, pos] = k[:, :, 0], v[:, :, 0]
            return keys[i, :, :, :used], values[i, :, :, :used], attend_to
        h = self._blocks_on(x[:, None], pos[:, None], write)
        return self.transformer.ln_f(h)[:, 0], StaticKVCache(keys, values, inputs, state.lengths + 1)

    def _blocks_on(self, x: Tensor, positions: Tensor, write: Any) -> Tensor:
        """The blocks on new tokens x (B, T, D) at ``positions``; ``write(layer, k, v)`` stores their keys and
        values and returns what they attend to: (keys, values, mask), mask None for causal among themselves."""
        h = self.transformer.drop(x + self._position(positions))
        for i, block in enumerate(self._blocks()):
            attn = block.attn
            q, k, v = (attn.heads(t) for t in attn.qkv(block.ln1(h)).chunk(3, dim=-1))
            keys, values, mask = write(i, k, v)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=mask is None)
            h = h + attn.merge(y)
            h = h + block.mlp(block.ln2(h))
        return h

    def _keep_last(self, state: StaticKVCache, rows: Tensor) -> StaticKVCache:
        """The cache with sequences ``rows`` cut to their last ``keep_tokens`` tokens, recomputed."""
        keep = self.keep_tokens
        idx = rows.nonzero().squeeze(1)
        kept = state.inputs[idx, self.context_tokens - keep:]
        keys, values, inputs = state.keys.clone(), state.values.clone(), state.inputs.clone()
        inputs[idx, :keep] = kept

        def write(i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, None]:
            keys[i, idx, :, :keep], values[i, idx, :, :keep] = k, v
            return k, v, None
        self._blocks_on(kept, torch.arange(keep, device=kept.device)[None], write)
        return StaticKVCache(keys, values, inputs, torch.where(rows, keep, state.lengths))

    def _blocks(self) -> list[Any]:
        from agents.transformer import Block
        return [b for b in self.transformer.blocks if isinstance(b, Block)]

    def _position(self, positions: Tensor) -> Tensor:
        pe = self.transformer.position_embedding(positions)
        assert pe is not None  # built with learned positions
        return pe

    def state_bytes(self, state: StaticKVCache) -> int:
        """The cache's columns in use (keys, values and input embeddings), not the whole preallocated buffer."""
        per_column = (2 * state.keys[..., :1, :].numel() * state.keys.element_size()
                      + state.inputs[:, :1].numel() * state.inputs.element_size())
        return int(state.lengths.max()) * per_column

    def restart(self, state: StaticKVCache, rows: Tensor) -> StaticKVCache:
        return StaticKVCache(state.keys, state.values, state.inputs, torch.where(rows, 0, state.lengths))
