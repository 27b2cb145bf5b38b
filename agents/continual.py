"""Continual offline fine-tuning of L2M's pre-trained multi-task DT on a task sequence (``python -m
runners.continual``; Schmied et al. 2023, "Learning to Modulate pre-trained Models in RL", official code github
``ml-jku/L2M``; ``../shared/papers/l2m.md``; the suite: :mod:`envs.continual`).

Every method starts from the same pre-trained :class:`agents.l2m.MultiTaskDT` (``<method>.pretrained``: an
``mtdt`` run directory; its sizes are the model's) and trains, stage after stage, on the current task's
demonstrations only, with the same budget per stage. L2M fine-tunes with AdamW at a constant 1e-4, no warm-up,
gradient clip 0.25 (``cdt_mpdt_disc.yaml``); weight decay 0.01 on matrices, none on keys and modulations (the
official optimiser leaves raw ``Parameter`` s undecayed).

Methods (agent names):

* ``ft``: full fine-tuning of every weight.
* ``ewc``: ``ft`` plus Elastic Weight Consolidation (Kirkpatrick et al. 2017), ``lambda * sum_k sum_i F_k,i
  (theta_i - theta*_k,i)^2`` over the finished tasks k, lambda 400 (L2M). When a stage ends, the Fisher of
  its task is the mean over ``fisher_batches`` (L2M: 10) training batches of the squared gradient of the batch's
  loss (L2M's ``compute_importances``: an empirical Fisher), with the weights as anchor. L2M's default
  ``ewc_mode="separate"`` drops the previous task's terms at each switch (only the latest task is protected);
  here every finished task keeps its term, as EWC is defined.
* ``lora``: one LoRA (rank 8) shared by every task, the rest frozen (L2M's ``LoRA``: ``task_id`` ignored).
* ``lora_oracle``: one LoRA per task of the sequence, chosen by the task's index in training and in evaluation
  (the upper bound: it is told the task); the pre-training tasks are evaluated with a last slot that no task
  trains (the unmodulated model).
* ``l2m``: L2M's pool (:class:`agents.modulation.KeyPool`) of ``pool_size`` keys, each owning one LoRA or (IA)^3
  (``modulation``); each input selects its key by its query; loss = cross-entropy - ``pull`` x mean cosine of
  the queries to their keys (0.5); the usage penalty from the second task on.
* ``l2p``: L2P (Wang et al. 2022), L2M's prompt-pool baseline (``l2p.yaml``): 100 prompts of 5 tokens per layer,
  the top 5 by key prepended at every block of the frozen model; the same pull term and usage penalty.
* ``multitask``: full fine-tuning on all tasks of the sequence at once (each update's batch from the next task in
  turn), the same total budget: the reference that continual methods are measured against.

In the frozen methods only the modulation (and the keys) train: the embeddings, blocks and head keep the
pre-trained weights bit for bit (tested). The stage of an update is ``update // env.stage_updates``; a stage's
first update starts its task (:meth:`ContinualAgent.begin_stage`: the EWC terms of the task just finished, the
pool's usage counts), so a run resumed mid-stage continues exactly.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from agents.action_model import action_loss
from agents.base import Evaluation
from agents.l2m import MultiTaskDT, MultiTaskDTAgent
from agents.modulation import KeyPool, LoRA, Modulation, PromptPool, make_modulation
from agents.offline import OptimiserConfig
from configs import ConfigError, param
from envs.continual import ContinualTasks


@dataclass
class ContinualDTConfig(OptimiserConfig):
    """What every continual method shares: the pre-trained model and the optimiser of each stage."""
    pretrained: str = param("Run directory of the pre-trained mtdt model (runners.continual pre-trains one on "
                            "demand); the model's sizes are its")
    batch_size: int = param("Windows per gradient update", min=1)


@dataclass
class EWCConfig(ContinualDTConfig):
    ewc_lambda: float = param("Weight of the EWC penalty", min=0.0)
    fisher_batches: int = param("Training batches of a finished task its Fisher is averaged over", min=1)


@dataclass
class LoRAConfig(ContinualDTConfig):
    rank: int = param("LoRA rank", min=1)


@dataclass
class KeyedConfig(ContinualDTConfig):
    """The methods that select by key from a pool (L2M, L2P)."""
    pool_size: int = param("Keys of the pool, each with what it selects (a modulation or a prompt)", min=1)
    pull: float = param("Weight of the keys' pull towards their queries in the loss", min=0.0)


@dataclass
class L2MConfig(KeyedConfig):
    modulation: str = param("What each key owns: lora (query, value, feed-forward up-projection) or ia3",
                            choices=("lora", "ia3"))
    rank: int = param("LoRA rank (modulation=lora)", min=1)


class ContinualAgent(MultiTaskDTAgent):
    """Full fine-tuning (``ft``) stage by stage; the other methods change :meth:`prepare`, the loss and slots."""
    section: ClassVar[str] = "ft"
    config_class = ContinualDTConfig  # type: ignore[assignment]
    cfg: ContinualDTConfig  # type: ignore[assignment]
    envs: ContinualTasks  # type: ignore[assignment]
    STATE_KEYS: ClassVar[tuple[str, ...]] = ("gen", "stage")
    FROZEN: ClassVar[bool] = False  # only the modulation trains
    #: the modulations, keys and prompts: raw parameters, undecayed as in the official optimiser
    NO_DECAY = ("modulation.", "pool.", "prompt_pool.")

    # -- the model ------------------------------------------------------------------------
    def build_networks(self) -> dict[str, nn.Module]:
        from runners.rundir import open_run
        stage, n = self.envs.cfg.stage_updates, len(self.envs.sequence)
        if self.total_steps > stage * n:  # fewer stops early (a resume with --total-updates continues)
            raise ConfigError(f"run.total_steps={self.total_steps}, but {n} stages of env.stage_updates={stage} are "
                              f"{stage * n}: python -m runners.continual --total-updates=N sets both")
        if stage % self.cfg.updates_per_iteration:
            raise ConfigError(f"{self.section}.updates_per_iteration={self.cfg.updates_per_iteration} must divide "
                              f"env.stage_updates={stage}, so that no iteration spans two stages")
        if not self.cfg.pretrained:
            raise ConfigError(f"{self.section}.pretrained names no run directory: give --pretrained RUN_DIR "
                              "(python -m runners.continual pre-trains one on demand)")
        run = open_run(Path(self.cfg.pretrained), checkpoint="latest.pt")
        if run.spec.name != "mtdt":
            raise ConfigError(f"{run.path} is a {run.spec.name} run; the continual methods start from an mtdt run")
        weights = run.load_checkpoint(run.ckpt_dir / "latest.pt")["agent"]["policy"]
        m = run.sections["mtdt"]
        ds = self.demonstrations
        domain = self.envs.domain
        data = self.envs.load(domain, ds.root, ds.seed, ds.settings(domain.name, 0), ds.build_missing,
                              sys.stderr.isatty())
        self.data_by_domain = {domain.name: data}
        self.state_dim, self.max_act_dim = int(weights["embed_state.weight"].shape[1]), domain.act_dim
        ends = np.cumsum([len(tr.episode) for tr in data])
        #: per task, the rows of the windows (one per step, tasks in order) a training window may start at
        self.task_rows = {tr.task: np.arange(end - len(tr.episode), end) for tr, end in zip(data, ends)}
        widest = max(int(np.prod(tr.observations.shape[1:])) for tr in data)
        if widest > self.state_dim or int(weights["embed_action.weight"].shape[0]) != 65:
            raise ConfigError(f"the pre-trained model in {run.path} does not fit these tasks (state width "
                              f"{self.state_dim} < {widest}, or another action vocabulary)")
        policy = MultiTaskDT(self.state_dim, domain.act_dim, m.d_model, m.n_layer, m.n_head, m.context,
                             self.envs.horizon(domain), m.dropout)
        try:
            policy.load_state_dict(weights)
        except RuntimeError as exc:
            raise ConfigError(f"the pre-trained model in {run.path} does not match its own config: "
                              f"{str(exc).splitlines()[0]}") from None
        self.context = m.context
        self.prepare(policy)
        if self.FROZEN:
            for name, p in policy.named_parameters():
                p.requires_grad_(name.startswith(self.NO_DECAY))
        return {"policy": policy}

    def prepare(self, policy: MultiTaskDT) -> None:
        """Attach the method's modulation (none for full fine-tuning)."""

    def setup(self, networks: dict[str, nn.Module]) -> None:
        super().setup(networks)
        self.stage = -1  # no stage begun yet (checkpointed: a resumed run does not begin its stage again)

    # -- training -------------------------------------------------------------------------
    def begin_stage(self, stage: int) -> None:
        """The first update of ``stage``: the method's bookkeeping of the task switch."""
        self.stage = stage

    def training_task(self) -> str:
        return self.envs.sequence[self.envs.stage(self.env_steps)]

    def training_batch(self) -> tuple[str, dict[str, Tensor]]:
        stage = self.envs.stage(self.env_steps)
        if stage != self.stage:
            self.begin_stage(stage)
        task = self.training_task()
        batch = self.windows[0].sample(self.cfg.batch_size, self.context, self.gen, self.device,
                                       starts=self.task_rows[task])
        slots = self.slots_for([task] * self.cfg.batch_size)
        if slots is not None:
            batch["slots"] = slots
        return task, batch

    def slots_for(self, tasks: list[str]) -> Tensor | None:
        """The modulation slot of each input (None: none, or the pool chooses)."""
        return None


class EWC(ContinualAgent):
    section = "ewc"
    config_class = EWCConfig
    cfg: EWCConfig  # type: ignore[assignment]
    STATE_KEYS = ("gen", "stage", "ewc_terms")

    def setup(self, networks: dict[str, nn.Module]) -> None:
        super().setup(networks)
        #: per finished task: (Fisher, anchor) per parameter, in named_parameters order
        self.ewc_terms: list[tuple[list[Tensor], list[Tensor]]] = []

    def begin_stage(self, stage: int) -> None:
        if stage > 0:
            self.ewc_terms.append(self.fisher(self.envs.sequence[stage - 1]))
        super().begin_stage(stage)

    def fisher(self, task: str) -> tuple[list[Tensor], list[Tensor]]:
        """The task's empirical Fisher (mean squared batch gradient over ``fisher_batches`` batches) and anchor."""
        params = [p for p in self.policy.parameters() if p.requires_grad]
        squares = [torch.zeros_like(p) for p in params]
        starts = self.task_rows[task]
        for _ in range(self.cfg.fisher_batches):
            batch = self.windows[0].sample(self.cfg.batch_size, self.context, self.gen, self.device, starts=starts)
            self.policy.zero_grad(set_to_none=True)
            action_loss(self.policy(**batch), batch["actions"])[0].backward()
            for s, p in zip(squares, params):
                if p.grad is not None:
                    s += p.grad.detach() ** 2
        self.policy.zero_grad(set_to_none=True)
        return [s / self.cfg.fisher_batches for s in squares], [p.detach().clone() for p in params]

    def regularisers(self) -> dict[str, Tensor]:
        if not self.ewc_terms:
            return {}
        params = [p for p in self.policy.parameters() if p.requires_grad]
        penalty = sum((f * (p - a) ** 2).sum() for fisher, anchor in self.ewc_terms
                      for f, p, a in zip(fisher, params, anchor))
        return {"ewc": self.cfg.ewc_lambda * penalty}  # type: ignore[dict-item]


#: the frozen methods refuse the interventions that rewrite weights: the pre-trained model must stay as it was
FROZEN_REFUSALS = {name: "the pre-trained model is frozen (only the modulation trains)"
                   for name in ("shrink_perturb", "soft_shrink_perturb", "l2_init", "reset")}


class SharedLoRA(ContinualAgent):
    section = "lora"
    config_class = LoRAConfig
    cfg: LoRAConfig  # type: ignore[assignment]
    FROZEN = True
    UNSUPPORTED_INTERVENTIONS = {**ContinualAgent.UNSUPPORTED_INTERVENTIONS, **FROZEN_REFUSALS}

    def slot_count(self) -> int:
        return 1

    def prepare(self, policy: MultiTaskDT) -> None:
        b = policy.backbone
        policy.modulate(LoRA(self.slot_count(), b.cfg.n_layer, b.cfg.d_model, self.cfg.rank))

    def slots_for(self, tasks: list[str]) -> Tensor | None:
        return torch.zeros(len(tasks), dtype=torch.long, device=self.device)


class OracleLoRA(SharedLoRA):
    section = "lora_oracle"

    def slot_count(self) -> int:
        return len(self.envs.sequence) + 1  # the last slot: never trained (pre-training tasks)

    def slots_for(self, tasks: list[str]) -> Tensor | None:
        seq = self.envs.sequence
        return torch.tensor([seq.index(t) if t in seq else len(seq) for t in tasks], device=self.device)


class KeyedMethod(ContinualAgent):
    """What L2M and L2P share: a frozen model, a pool of keys whose usage penalty starts with each task, and the
    loss term that pulls the selected keys towards their queries."""
    cfg: KeyedConfig  # type: ignore[assignment]
    FROZEN = True
    UNSUPPORTED_INTERVENTIONS = SharedLoRA.UNSUPPORTED_INTERVENTIONS

    def key_pool(self) -> KeyPool:
        raise NotImplementedError

    def begin_stage(self, stage: int) -> None:
        self.key_pool().start_task(stage)
        super().begin_stage(stage)

    def regularisers(self) -> dict[str, Tensor]:
        pull = self.policy.pull
        assert pull is not None, "the pool's forward sets the pull term"
        return {"key_pull": -self.cfg.pull * pull}


class L2M(KeyedMethod):
    section = "l2m"
    config_class = L2MConfig  # type: ignore[assignment]
    cfg: L2MConfig  # type: ignore[assignment]

    def prepare(self, policy: MultiTaskDT) -> None:
        b, c = policy.backbone, self.cfg
        modulation: Modulation = make_modulation(c.modulation, c.pool_size, b.cfg.n_layer, b.cfg.d_model, c.rank)
        policy.modulate(modulation, KeyPool(c.pool_size, b.cfg.d_model))

    def key_pool(self) -> KeyPool:
        assert self.policy.pool is not None
        return self.policy.pool

    def evaluate(self, episodes: int) -> Evaluation:
        """The evaluation, plus key-selection accuracy: per task learned so far, the share of its evaluation
        inputs that select its own key (the one its training inputs selected most), and their mean."""
        pool = self.key_pool()
        pool.recorded = []
        try:
            result = super().evaluate(episodes)
            chosen = torch.stack(pool.recorded)  # (forward passes, tasks x episodes), rows in evaluation order
        finally:
            pool.recorded = None
        tasks = [t for t in self.envs.domain.tasks for _ in range(episodes)]
        learned = self.envs.sequence[:self.envs.stage(max(self.env_steps - 1, 0)) + 1]
        accuracy = {}
        for i, task in enumerate(learned):
            rows = [r for r, t in enumerate(tasks) if t == task]
            accuracy[task] = pool.own_key_share(chosen[:, rows], i)
            result.metrics[f"metaworld/{task}/key_accuracy"] = accuracy[task]
        result.metrics["metaworld/key_accuracy"] = float(np.mean(list(accuracy.values())))
        result.record["key_accuracy"] = accuracy
        return result


@dataclass
class L2PConfig(KeyedConfig):
    length: int = param("Tokens of each prompt, per layer", min=1)
    top_k: int = param("Prompts selected per input", min=1)


class L2P(KeyedMethod):
    """L2P (Wang et al. 2022) on the frozen model: prompts chosen by key from a pool, at every block."""
    section = "l2p"
    config_class = L2PConfig  # type: ignore[assignment]
    cfg: L2PConfig  # type: ignore[assignment]

    def prepare(self, policy: MultiTaskDT) -> None:
        b, c = policy.backbone, self.cfg
        if c.top_k > c.pool_size:
            raise ConfigError(f"l2p.top_k={c.top_k} prompts cannot come from a pool of l2p.pool_size={c.pool_size}")
        policy.prompt(PromptPool(c.pool_size, b.cfg.n_layer, c.length, b.cfg.d_model, c.top_k))

    def key_pool(self) -> KeyPool:
        assert self.policy.prompt_pool is not None
        return self.policy.prompt_pool.pool


class MultiTask(ContinualAgent):
    section = "multitask"

    def training_task(self) -> str:
        return self.envs.sequence[self.env_steps % len(self.envs.sequence)]
