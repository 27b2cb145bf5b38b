"""Retrieval-Augmented Decision Transformer (RA-DT; Schmied et al. 2024, arXiv 2410.07071;
``../shared/papers/ra_dt.md``) on grid-world learning histories, evaluated in context.

A research variant of :class:`agents.dt.DecisionTransformerAgent`: the same DT, trained on windows inside
episodes with return-to-go conditioning, plus a cross-attention sublayer per block over one sub-trajectory
retrieved from an external memory (:mod:`agents.retrieval`).

How a run goes
--------------
1. **Key model** (``embedder``). ``"dt"`` (domain-specific, the official default): a plain DT of the
   policy's size trained for ``embedder_updates`` updates on the same data, then frozen. The official code
   loads a separately pre-trained DT checkpoint; here it is trained lazily, at the start of the first
   policy update, **outside the budget**: ``run.total_steps`` (``env_steps``) counts the policy's updates
   only, and the first iteration reports the key model's final loss (``embedder/*``). ``"lm"``
   (domain-agnostic): :class:`agents.retrieval.FrozenLMEmbedder` (FrozenHopfield + MiniLM), nothing trained.
2. **Training memory.** Every episode of every training history is cut every ``cache_steps`` steps
   (:func:`chunk_trajectory`); a chunk's key is :func:`chunk_key` of the frozen key model's state-token
   hidden states over the ``key_window`` steps before the cut; its value is the sub-trajectory around the cut
   (``cache_steps`` before and after), with its task, its episode (trajectory id) and the episode's return;
   near-duplicates are removed (:meth:`Memory.deduplicate`). Values keep grid cells as indices, one-hot
   only when embedded (a 100-float one-hot per step would make the Dark-Room memory ~1.3 GB).
3. **Policy updates.** A fresh :class:`RetrievalDT` (the policy is not the key model) trains like DT. For
   each batch the key model embeds each window (query dropout ``query_dropout``), the memory returns the
   best ``keep`` chunks with the training rules (own trajectory excluded, task weight ``w_task_train``,
   return weight 0; :meth:`Memory.retrieve`), and the policy cross-attends to their tokens.
4. **Evaluation** (:class:`RADTSession`). Per task a memory that starts empty; the first episode runs
   without retrieval; every ``retrieve_every`` steps the key model embeds the current episode's last
   ``key_window`` steps and that task's memory answers with the evaluation rules (return weight
   ``w_ret_eval``, no exclusion); the rollout's memory is replaced with ``set_memory(..., recompute=True)``
   (exact: the cached context is re-run with the new memory), skipped when the same chunks come back;
   each finished episode is chunked, keyed and added to its task's memory.

Checkpoints and resumes
-----------------------
The policy and its optimiser are checkpointed as every agent's. The key model is *not* in
:meth:`networks` on purpose: interventions (shrink-and-perturb, resets) act on every network there, and a
perturbed key model would make the memory's keys stale; its weights and ``embedder_ready`` are held in
checkpoints through :meth:`checkpointed` (domain-specific only; the LM is a fixed download-free package and
is not copied into every checkpoint). The memory is not checkpointed: it is a deterministic function of the
data and the frozen key model, so it is rebuilt on first use after a resume (``load_state_dict`` drops any
memory built before). The generators of the query dropout and of the memory's random draws (``random``
retrieval, short queries) are checkpointed, so a resumed run retrieves as an uninterrupted one.

Costs measured on this machine (one thread, 2 busy cores, configs/ra_dt.yaml sizes, 3 Dark-Room tasks' histories
of 200 episodes): the key model's update 0.4 s (4000 updates ~27 min); keying 2,400 chunks 9.6 s (all 80 tasks,
64k chunks: ~4 min, again after every resume); deduplication kept 194 of the 2,400 chunks (a converged
Q-learner's late episodes are near copies of each other).

Differences from the official code, besides those of :mod:`agents.dt` and :mod:`agents.retrieval`:
``retrieve_every`` defaults to 10 steps (official: every step) for 2 CPU cores; the key model is trained in
the same run for ``embedder_updates`` (official: a separate 100k-update DT run).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.base import check_finite
from agents.dt import DecisionTransformerAgent, SequenceModelConfig, TransformerSession
from agents.offline import Session, cell_index, returns_to_go, warmup_cosine
from agents.retrieval import (
    Chunks,
    FrozenLMEmbedder,
    Memory,
    Retrieved,
    Segment,
    chunk_key,
    chunk_trajectory,
    embed_windows,
)
from agents.transformer import DecisionTransformer, loss, token_mask
from configs import ConfigError, param
from envs.gridworlds import N_ACTIONS


@dataclass
class RADTConfig(SequenceModelConfig):
    """The DT of :class:`SequenceModelConfig` plus RA-DT's memory, keys and retrieval."""
    cache_steps: int = param("Memory: cut trajectories into chunks every this many steps; a chunk's value holds "
                             "cache_steps steps before and after the cut, its key averages the last cache_steps "
                             "state embeddings (RA-DT grids: 25)", min=1)
    key_window: int = param("Steps before a cut (or before the query's last step) the key model reads (RA-DT: 50; "
                            "at most context)", min=2)
    top_k: int = param("Retrieval: candidates searched by cosine similarity before reweighting (RA-DT: 50)", min=1)
    keep: int = param("Retrieval: chunks kept after reweighting, cross-attended by the policy (RA-DT: 1)", min=1)
    query_dropout: float = param("Training: dropout on the key model's state embeddings before averaging a query "
                                 "(RA-DT grids: 0.2)", min=0.0, max=1.0)
    w_task_train: float = param("Training: reweighting bonus for a chunk of the query's own task (RA-DT: 1)",
                                min=0.0)
    w_ret_eval: float = param("Evaluation: weight of the min-max normalised episode return in the reweighting "
                              "(RA-DT: 1)", min=0.0)
    retrieval: str = param("'similarity' (top-k by cosine, then reweighting) or 'random' (ablation: uniform "
                           "chunks of the memory)", choices=("similarity", "random"))
    reweight: bool = param("Rerank the top-k by similarity + return + task (false, ablation: cosine alone)")
    embedder: str = param("Key model: 'dt' (domain-specific: a DT pre-trained on the same data, then frozen) or "
                          "'lm' (domain-agnostic: FrozenHopfield + frozen MiniLM)", choices=("dt", "lm"))
    embedder_updates: int = param("'dt' key model: updates it trains for before the policy (outside run.total_steps;"
                                  " the policy is a fresh model)", min=1)
    retrieve_every: int = param("Evaluation: retrieve every this many steps of an episode (RA-DT grids: 1)", min=1)


#: tokens of a retrieved sub-trajectory (the official cross-attention embeds states, actions, RTG and rewards)
MEMORY_KINDS = ("rtg", "state", "action", "reward")


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------

class RetrievalDT(DecisionTransformer):
    """The RA-DT policy: a :class:`DecisionTransformer` with cross-attention, called on raw retrieved chunks.

    ``forward`` takes the training window (as DT) and the retrieved values as tensors (B, C, L): ``mem_states``
    (grid cell indices, one-hot here), ``mem_actions``, ``mem_rewards``, ``mem_rtg``, ``mem_timesteps`` and
    ``mem_mask`` (all False where nothing was retrieved: the cross-attention then adds exactly 0), so that a
    batch of :meth:`RADT.sample_batch` is a complete input: ``net(**batch)``.
    """

    def memory_tokens(self, mem_states: Tensor, mem_actions: Tensor, mem_rewards: Tensor, mem_rtg: Tensor,
                      mem_timesteps: Tensor, mem_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Retrieved chunks (B, C, L) -> (memory (B, M, D), memory_mask (B, M)), M = C * L * 4."""
        states = F.one_hot(mem_states.long(), self.embed.state.in_features).float()
        return self.embed_memory(states, mem_actions, mem_rewards, mem_rtg, mem_timesteps, mem_mask)

    def forward(self, states: Tensor, actions: Tensor, rewards: Tensor | None, rtg: Tensor | None,  # type: ignore[override]
                timesteps: Tensor, mask: Tensor | None = None, mem_states: Tensor | None = None,
                mem_actions: Tensor | None = None, mem_rewards: Tensor | None = None, mem_rtg: Tensor | None = None,
                mem_timesteps: Tensor | None = None, mem_mask: Tensor | None = None,
                memory_mask: Tensor | None = None) -> Tensor:
        """Action logits (B, T, A); without ``mem_*`` the policy runs without memory. ``memory_mask`` (B, M),
        the memory's token mask, is derived from ``mem_mask`` when None (batches carry it for the monitor)."""
        memory = None
        if mem_states is not None:
            assert mem_actions is not None and mem_rewards is not None and mem_rtg is not None \
                and mem_timesteps is not None and mem_mask is not None, "retrieved chunks need every mem_* field"
            memory, derived = self.memory_tokens(mem_states, mem_actions, mem_rewards, mem_rtg, mem_timesteps,
                                                 mem_mask)
            memory_mask = derived if memory_mask is None else memory_mask
        return super().forward(states, actions, rewards, rtg, timesteps, mask, memory, memory_mask)


def state_hidden(model: DecisionTransformer, window: Segment, size: int) -> Tensor:
    """The hidden states (B, T, D) of the state tokens of a plain DT on a window whose states are cell indices."""
    states = F.one_hot(window.states.long(), size * size).float()
    x = model.embed(states, window.actions, window.rewards, window.rtg, window.timesteps)
    h = model.transformer(x, token_mask(window.mask, len(model.kinds)))
    return h.view(h.shape[0], -1, len(model.kinds), h.shape[-1])[:, :, model.state_index]


class DTKeys:
    """The domain-specific :class:`agents.retrieval.Embedder`: a frozen DT's state-token hidden states."""

    def __init__(self, model: DecisionTransformer, size: int, device: torch.device):
        self.model, self.size, self.device = model, size, device
        self.dim = model.cfg.d_model

    @torch.no_grad()
    def __call__(self, window: Segment) -> Tensor:
        return state_hidden(self.model, window.map(lambda x: x.to(self.device)), self.size).float().cpu()


class LMKeys:
    """The domain-agnostic embedder on this suite's windows: cells -> (x, y), RTG back to returns."""

    def __init__(self, lm: FrozenLMEmbedder, size: int, rtg_scale: float, device: torch.device):
        self.lm, self.size, self.rtg_scale, self.device = lm, size, rtg_scale, device
        self.dim = int(lm.lm.config.hidden_size)

    @torch.no_grad()
    def __call__(self, window: Segment) -> Tensor:
        cells = window.states.long()
        xy = torch.stack([cells // self.size, cells % self.size], dim=-1).float()
        w = Segment(xy, window.actions, window.rewards, window.rtg * self.rtg_scale, window.timesteps, window.mask)
        return self.lm(w.map(lambda x: x.to(self.device))).float().cpu()


# ---------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------

def values_as_inputs(values: Segment, device: torch.device) -> dict[str, Tensor]:
    """Retrieved values (B, C, L) -> the policy's ``mem_*`` inputs on ``device``."""
    return {"mem_states": values.states.to(device).long(), "mem_actions": values.actions.to(device),
            "mem_rewards": values.rewards.to(device), "mem_rtg": values.rtg.to(device),
            "mem_timesteps": values.timesteps.to(device), "mem_mask": values.mask.to(device)}


class RADT(DecisionTransformerAgent):
    """RA-DT: DT with cross-attention over sub-trajectories retrieved from an external memory (module docstring)."""

    section = "ra_dt"
    config_class = RADTConfig
    cfg: RADTConfig
    STATE_KEYS = ("gen", "query_gen", "retrieval_rng")  # type: ignore[assignment]  # dt.py infers tuple[str]
    KINDS = ("rtg", "state", "action")
    ACROSS_EPISODES = False

    policy: RetrievalDT

    def build_networks(self) -> dict[str, nn.Module]:
        cfg, size = self.cfg, self.envs.spec.size
        if cfg.d_model % cfg.n_head:
            raise ConfigError(f"{self.section}.n_head={cfg.n_head} must divide {self.section}.d_model={cfg.d_model}")
        if cfg.key_window > cfg.context and cfg.embedder == "dt":
            raise ConfigError(f"{self.section}.key_window={cfg.key_window} exceeds the key model's context "
                              f"{self.section}.context={cfg.context}")
        if cfg.keep > cfg.top_k:
            raise ConfigError(f"{self.section}.keep={cfg.keep} exceeds {self.section}.top_k={cfg.top_k}")
        if cfg.cache_steps > cfg.key_window:
            raise ConfigError(f"{self.section}.cache_steps={cfg.cache_steps} exceeds {self.section}.key_window="
                              f"{cfg.key_window}: a key averages the last cache_steps steps of its window")
        return {"policy": RetrievalDT(size * size, N_ACTIONS, self.KINDS, cfg.context, cfg.n_layer, cfg.d_model,
                                      cfg.n_head, max_timestep=self.envs.horizon, dropout=cfg.dropout,
                                      attn_dropout=cfg.attn_dropout, cross_attention=True, memory_kinds=MEMORY_KINDS,
                                      memory_len=2 * cfg.cache_steps)}

    def setup(self, networks: dict[str, nn.Module]) -> None:
        super().setup(networks)
        cfg, size = self.cfg, self.envs.spec.size
        self.keys: DTKeys | LMKeys
        self.embedder: nn.Module
        if cfg.embedder == "dt":
            with torch.random.fork_rng(devices=[]):  # its own initialisation; the global stream is left alone
                torch.manual_seed(self.seed + 7919)
                self.embedder = DecisionTransformer(size * size, N_ACTIONS, self.KINDS, cfg.context, cfg.n_layer,
                                                    cfg.d_model, cfg.n_head, max_timestep=self.envs.horizon,
                                                    dropout=cfg.dropout, attn_dropout=cfg.attn_dropout
                                                    ).to(self.device)
            self.keys = DTKeys(self.embedder, size, self.device)
            self.embedder_ready = False
        else:
            lm = FrozenLMEmbedder(2, N_ACTIONS, state_bins=(0, size - 1, size), seed=self.seed).to(self.device)
            self.embedder = lm
            self.keys = LMKeys(lm, size, self.rtg_scale, self.device)
            self.embedder_ready = True
        self.query_gen = torch.Generator().manual_seed(self.seed + 1)  # keys live on the CPU (faiss)
        faiss_threads(torch.get_num_threads())
        self.retrieval_rng = np.random.default_rng(self.seed + 2)
        self.memory: Memory | None = None
        self.pending_metrics: dict[str, float] = {}

    def checkpointed(self) -> tuple[str, ...]:
        extra = ("embedder", "embedder_ready") if self.cfg.embedder == "dt" else ()
        return (*super().checkpointed(), *extra)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memory = None  # keyed by the key model before the load: rebuilt on first use
        if self.cfg.embedder == "dt" and self.embedder_ready:
            self.freeze_embedder()

    # -- phase 1: the key model and the training memory ---------------------------------

    def freeze_embedder(self) -> None:
        self.embedder.eval()
        for p in self.embedder.parameters():
            p.requires_grad_(False)

    def train_embedder(self) -> dict[str, float]:
        """Train the 'dt' key model for ``embedder_updates`` updates on DT windows, then freeze it."""
        cfg = self.cfg
        model = self.embedder
        assert isinstance(model, DecisionTransformer)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = int(cfg.embedder_updates * min(1.0, cfg.warmup_updates / max(1, self.total_steps)))
        model.train()
        t0 = time.perf_counter()
        with torch.enable_grad():  # also when the first evaluation comes before any update
            ce = self._train_embedder(model, opt, warmup)
        self.freeze_embedder()
        self.embedder_ready = True
        return {"embedder/action_ce": ce, "embedder/seconds": time.perf_counter() - t0}

    def _train_embedder(self, model: DecisionTransformer, opt: torch.optim.Optimizer, warmup: int) -> float:
        """The key model's updates; its last action loss."""
        cfg = self.cfg
        ce = torch.zeros(())
        for update in range(cfg.embedder_updates):
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(update, warmup, cfg.embedder_updates, cfg.lr, cfg.lr_final)
            batch = super().sample_batch()
            with self.autocast():
                logits = model(**batch)
            ce = loss(logits.float(), batch["actions"], batch["mask"])
            check_finite("key model's action loss", ce)
            opt.zero_grad(set_to_none=True)
            ce.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            opt.step()
        return float(ce.detach())

    def new_memory(self, seed: int) -> Memory:
        return Memory(self.keys.dim, 2 * self.cfg.cache_steps, (), seed=seed)

    def episode_chunks(self) -> list[Chunks]:
        """Every episode of the training histories, chunked (task id = history index, trajectory id = episode)."""
        cfg, a = self.cfg, self.data.arrays
        episodes = a["episode"]
        cuts = np.flatnonzero(np.diff(episodes)) + 1
        out = []
        for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(episodes)]):
            s = slice(int(start), int(stop))
            out.append(chunk_trajectory(
                torch.from_numpy(a["cell"][s]).float(), torch.from_numpy(a["action"][s]),
                torch.from_numpy(a["reward"][s]), torch.from_numpy(a["rtg"][s]) / self.rtg_scale,
                torch.from_numpy(a["timestep"][s]), task_id=int(a["task"][start]), traj_id=int(episodes[start]),
                total_return=float(a["reward"][s].sum()), cache_steps=cfg.cache_steps, key_window=cfg.key_window))
        return out

    def build_memory(self) -> dict[str, float]:
        """The training memory from every training episode, keyed by the frozen key model, deduplicated."""
        t0 = time.perf_counter()
        memory = self.new_memory(self.seed)
        memory._rng = self.retrieval_rng  # checkpointed, so random draws continue across a resume
        for chunks in self.batched(self.episode_chunks()):
            keys = embed_windows(self.keys, chunks.windows, self.cfg.cache_steps)
            memory.add(keys, chunks.values, chunks.task_ids, chunks.traj_ids, chunks.returns)
        chunks_total = len(memory)
        removed = memory.deduplicate()
        self.memory = memory
        return {"memory/chunks": float(len(memory)), "memory/duplicates_removed": float(removed),
                "memory/chunks_before_dedup": float(chunks_total), "memory/seconds": time.perf_counter() - t0}

    @staticmethod
    def batched(chunks: list[Chunks], size: int = 4096) -> list[Chunks]:
        """Chunks of many trajectories concatenated into blocks of about ``size`` chunks."""
        out, block, n = [], [], 0
        for c in chunks:
            block.append(c)
            n += len(c.task_ids)
            if n >= size:
                out.append(cat_chunks(block))
                block, n = [], 0
        if block:
            out.append(cat_chunks(block))
        return out

    def prepare(self) -> None:
        """Phase 1 when not done (the key model), then the training memory when missing (also after a resume)."""
        if not self.embedder_ready:
            self.pending_metrics.update(self.train_embedder())
        if self.memory is None:
            self.pending_metrics.update(self.build_memory())

    # -- phase 2: the policy ------------------------------------------------------------

    def query_keys(self, window: Segment, dropout: float) -> Tensor:
        """(B, key_dim) keys of query windows (the last ``key_window`` steps), with query dropout."""
        window = window.map(lambda x: x[:, -self.cfg.key_window:])
        hidden = self.keys(window)
        return chunk_key(hidden, window.mask.to(hidden.device), self.cfg.cache_steps, dropout, self.query_gen)

    def retrieve_for(self, memory: Memory, keys: Tensor, training: bool, **kwargs: Any) -> Retrieved:
        cfg = self.cfg
        if training:
            kwargs.update(w_task=cfg.w_task_train, w_ret=0.0)
        else:
            kwargs.update(w_task=0.0, w_ret=cfg.w_ret_eval)
        return memory.retrieve(keys, cfg.top_k, keep=cfg.keep, training=training, mode=cfg.retrieval,  # type: ignore[arg-type]
                               reweight=cfg.reweight, **kwargs)

    def sample_batch(self) -> dict[str, Tensor]:
        """DT windows plus the retrieved chunks (``mem_*``, and the memory's token mask for the monitor)."""
        assert self.memory is not None, "prepare() builds the memory first"
        cfg = self.cfg
        starts = self.gen.choice(self.starts, cfg.batch_size)
        window = self.data.gather(starts, cfg.context)
        batch = self.window_tensors(window)
        last = starts + cfg.context - 1
        a = self.data.arrays
        if cfg.retrieval == "random":
            keys = torch.zeros(len(starts), self.keys.dim)
        else:
            seg = Segment(torch.from_numpy(window["cell"]).float(), torch.from_numpy(window["action"]),
                          torch.from_numpy(window["reward"]), torch.from_numpy(window["rtg"]) / self.rtg_scale,
                          torch.from_numpy(window["timestep"]), torch.ones(window["cell"].shape, dtype=torch.bool))
            keys = self.query_keys(seg, cfg.query_dropout)
        found = self.retrieve_for(self.memory, keys, True, query_traj_ids=torch.from_numpy(a["episode"][last]),
                                  query_task_ids=torch.from_numpy(a["task"][last]),
                                  query_timesteps=torch.from_numpy(a["timestep"][last]))
        batch.update(values_as_inputs(found.values, self.device))
        batch["memory_mask"] = token_mask(batch["mem_mask"].flatten(1), len(MEMORY_KINDS))  # type: ignore[assignment]
        self.last_retrieved = found
        return batch

    def window_tensors(self, window: dict[str, np.ndarray]) -> dict[str, Tensor]:
        from agents.offline import to_tensors
        batch = to_tensors(window, self.envs.spec.size, self.device)
        batch["rtg"] = batch["rtg"] / self.rtg_scale
        return batch

    def update(self) -> dict[str, float]:
        self.prepare()
        metrics = super().update()
        found = self.last_retrieved
        metrics["retrieval/found"] = float(found.found.float().mean())
        metrics["retrieval/similarity"] = float(found.sim[found.found].mean()) if bool(found.found.any()) else 0.0
        return metrics

    def iterate(self, diagnose: bool) -> tuple[dict[str, float], list]:
        """As every offline agent's; the iteration that trained the key model or built the memory reports them
        (``embedder/*``, ``memory/*``: once, not averaged over the iteration's updates)."""
        metrics, episodes = super().iterate(diagnose)
        metrics.update(self.pending_metrics)
        self.pending_metrics = {}
        return metrics, episodes

    def session(self, tasks: np.ndarray, generator: torch.Generator) -> Session:
        if not self.embedder_ready:  # evaluated before any update: the key model must exist
            self.pending_metrics.update(self.train_embedder())
        return RADTSession(self, tasks, generator)


def faiss_threads(n: int) -> None:
    """faiss's OpenMP threads follow torch's (``run.torch_threads``): with 2 OpenMP threads on 2 busy cores the
    many tiny searches of an evaluation took 4-51 s instead of 1.2 s with one (the same tiny evaluation)."""
    from agents.retrieval import _import_faiss
    _import_faiss().omp_set_num_threads(max(1, n))


def cat_chunks(parts: list[Chunks]) -> Chunks:
    return Chunks(Segment.cat([p.windows for p in parts]), Segment.cat([p.values for p in parts]),
                  torch.cat([p.task_ids for p in parts]), torch.cat([p.traj_ids for p in parts]),
                  torch.cat([p.returns for p in parts]))


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------

class RADTSession(TransformerSession):
    """RA-DT rollouts on n tasks: one memory per task, empty at the start, filled by each finished episode."""

    agent: RADT
    model: RetrievalDT

    def __init__(self, agent: RADT, tasks: np.ndarray, generator: torch.Generator):
        super().__init__(agent, len(tasks), generator)
        n, horizon = len(tasks), agent.envs.horizon
        self.memories = [agent.new_memory(agent.seed * 1_000_003 + i) for i in range(n)]
        self.episode = 0
        # the current episode, step by step (cells, actions, rewards, conditioning RTG), for queries and the memory
        self.cells = torch.zeros(n, horizon, dtype=torch.long)
        self.actions = torch.zeros(n, horizon, dtype=torch.long)
        self.rewards = torch.zeros(n, horizon)
        self.rtg = torch.zeros(n, horizon)
        self.retrieved: Tensor | None = None  # (n, keep) memory indices the rollout's memory holds

    def begin_episode(self) -> None:
        super().begin_episode()
        self.retrieved = None
        self.rollout = self.model.set_memory(self.rollout, None)  # the context is empty: nothing to recompute

    def logits(self, obs: np.ndarray) -> Tensor:
        t, agent = self.t, self.agent
        self.cells[:, t] = torch.from_numpy(cell_index(obs, self.size))
        self.rtg[:, t] = ((agent.target_return - self.episode_return) / agent.rtg_scale).cpu()
        if self.episode > 0 and t % agent.cfg.retrieve_every == 0:
            self.retrieve()
        return super().logits(obs)

    def query(self) -> Segment:
        """The current episode's steps so far, up to the step being acted on (its action a placeholder 0)."""
        t = self.t + 1
        n = self.cells.shape[0]
        return Segment(self.cells[:, :t].float(), self.actions[:, :t], self.rewards[:, :t], self.rtg[:, :t],
                       torch.arange(t).expand(n, t), torch.ones(n, t, dtype=torch.bool))

    def retrieve(self) -> None:
        agent = self.agent
        if agent.cfg.retrieval == "random":
            keys = torch.zeros(len(self.memories), agent.keys.dim)
        else:
            keys = agent.query_keys(self.query(), 0.0)
        found = [agent.retrieve_for(m, keys[i:i + 1], False) for i, m in enumerate(self.memories)]
        index = torch.cat([f.index for f in found])
        if self.retrieved is not None and torch.equal(index, self.retrieved):
            return  # the same chunks: the rollout's memory is already right
        values = Segment.cat([f.values for f in found])
        inputs = values_as_inputs(values, self.device)
        memory, mask = self.model.memory_tokens(**inputs)
        recompute = bool((self.rollout.cache.lengths > 0).any())  # at t = 0 there is nothing to recompute
        self.rollout = self.model.set_memory(self.rollout, memory, mask, recompute=recompute)
        self.retrieved = index

    def observe(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        self.actions[:, self.t] = torch.as_tensor(actions)
        self.rewards[:, self.t] = torch.as_tensor(rewards, dtype=torch.float32)
        super().observe(actions, rewards)

    def end_episode(self) -> None:
        """Chunk every task's finished episode, key the chunks (one batch) and add them to that task's memory."""
        agent, t = self.agent, self.t
        single = np.zeros(t, dtype=np.int64)
        chunks = []
        for i in range(len(self.memories)):
            r = self.rewards[i, :t]
            rtg = torch.from_numpy(returns_to_go(r.numpy(), single)) / agent.rtg_scale
            chunks.append(chunk_trajectory(self.cells[i, :t].float(), self.actions[i, :t], r, rtg, torch.arange(t),
                                           task_id=i, traj_id=self.episode, total_return=float(r.sum()),
                                           cache_steps=agent.cfg.cache_steps, key_window=agent.cfg.key_window))
        keys = embed_windows(agent.keys, cat_chunks(chunks).windows, agent.cfg.cache_steps)
        offset = 0
        for memory, c in zip(self.memories, chunks):
            m = len(c.task_ids)
            memory.add(keys[offset:offset + m], c.values, c.task_ids, c.traj_ids, c.returns)
            offset += m
        self.episode += 1
