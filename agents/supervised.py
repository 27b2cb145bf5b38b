"""A supervised learner on a non-stationary task stream (envs/supervised.py).

One iteration is one task: ``steps_per_task`` minibatch steps (SGD or Adam) on the task's
data, then the loss and accuracy on all of it. A falling per-task training accuracy over
the stream is loss of plasticity. Variants: ``online`` (plain), ``hard_reset`` (an oracle
that re-initialises the model and the optimiser state at every task boundary), ``soft_reset``
(plasticity/soft_reset.py: learned OU drift towards the initialisation, per layer;
``soft_reset_param`` per parameter; ``soft_reset_prox`` proximal), and any ``--intervention``.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.base import Agent, check_finite
from agents.networks import mlp
from configs import param
from envs.supervised import Task, TaskStream
from plasticity.interventions import fresh_copy
from plasticity.soft_reset import SoftReset


@dataclass
class SupervisedConfig:
    """Model and optimiser of the supervised learner."""
    model: str = param("mlp (fully connected) or cnn (two 3x3 convs + fc)", choices=("mlp", "cnn"))
    hidden: int = param("Width of the hidden layers", min=1)
    depth: int = param("Hidden layers of the mlp", min=1)
    optimizer: str = param("sgd or adam", choices=("sgd", "adam"))
    lr: float = param("Learning rate", min=0.0, min_exclusive=True)
    momentum: float = param("SGD momentum", min=0.0, max=1.0)
    batch_size: int = param("Minibatch size", min=1)
    steps_per_task: int = param("Optimiser steps per task (one iteration)", min=1)
    reset_at_task_start: bool = param("Oracle hard reset: re-initialise model and optimiser state at each new task")
    soft_reset: bool = param("Train with the soft-reset learner (plasticity/soft_reset.py) around the optimiser")
    sr_per: str = param("Soft reset: one drift gamma per layer or per parameter", choices=("layer", "parameter"))
    sr_lr_gamma: float = param("Soft reset: step size of the gamma ascent (0: gamma fixed)", min=0.0)
    sr_k_gamma: int = param("Soft reset: gamma ascent steps per batch (K_gamma)", min=1)
    sr_m_gamma: int = param("Soft reset: Monte Carlo samples per gamma step (M_gamma)", min=1)
    sr_s2_ratio: float = param("Soft reset: posterior variance s^2 as a multiple of sigma0^2", min=0.0,
                               min_exclusive=True)
    sr_prior_mean: str = param("Soft reset: mu0 = the initial parameters or zero", choices=("init", "zero"))
    sr_k_theta: int = param("Soft reset: optimiser steps per batch (K_theta > 1: the proximal variant)", min=1)
    sr_gamma_init: float = param("Soft reset: initial gamma (with sr_lr_gamma=0, gamma stays there)", min=0.0, max=1.0)


def small_cnn(input_shape: tuple[int, ...], out: int, hidden: int) -> nn.Sequential:
    c, h, w = input_shape
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(c, 16, 3, padding=1)), ("act1", nn.ReLU()),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1)), ("act2", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(32 * h * w, hidden)), ("act_fc", nn.ReLU()),
        ("head", nn.Linear(hidden, out)),
    ]))


def task_loss(kind: str, outputs: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(outputs, targets) if kind == "classification" else F.mse_loss(outputs, targets)


class SupervisedLearner(Agent[SupervisedConfig]):
    """``env_steps`` counts optimiser steps here (the budget unit of the supervised suite)."""

    section = "learner"
    config_class = SupervisedConfig
    STATE_KEYS = ("gen", "soft_reset")
    envs: TaskStream

    def build_networks(self) -> dict[str, nn.Module]:
        cfg, shape, outputs = self.cfg, self.envs.input_shape, self.envs.num_outputs
        if cfg.model == "mlp":
            return {"model": mlp(shape, outputs, cfg.hidden, "relu", cfg.depth)}
        return {"model": small_cnn(shape, outputs, cfg.hidden)}

    def setup(self, networks: dict[str, nn.Module]) -> None:
        cfg, seed = self.cfg, self.seed
        self.steps_per_iteration = cfg.steps_per_task
        self.model = networks["model"]
        self.optimizer = self._make_optimizer()
        self.task: Task | None = None
        self.gen = torch.Generator().manual_seed(seed)
        self.soft_reset = None
        if cfg.soft_reset:
            self.soft_reset = SoftReset(self.model, self.optimizer, per=cfg.sr_per, lr_gamma=cfg.sr_lr_gamma,
                                        k_gamma=cfg.sr_k_gamma, m_gamma=cfg.sr_m_gamma, s2_ratio=cfg.sr_s2_ratio,
                                        prior_mean=cfg.sr_prior_mean, k_theta=cfg.sr_k_theta,
                                        gamma_init=cfg.sr_gamma_init, batch_size=cfg.batch_size,
                                        generator=torch.Generator().manual_seed(seed + 1))

    def _make_optimizer(self) -> torch.optim.Optimizer:
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)
        return torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum)

    @torch.no_grad()
    def _reset(self) -> None:
        fresh = fresh_copy(self.model)
        for p, q in zip(self.model.parameters(), fresh.parameters()):
            p.copy_(q)
        self.optimizer.state.clear()

    def iterate(self, diagnose: bool) -> tuple[dict[str, float], list]:
        cfg = self.cfg
        self.task = task = self.envs.next_task()
        if cfg.reset_at_task_start and task.index > 0:
            self._reset()
        x, y = task.inputs.to(self.device), task.targets.to(self.device)
        losses, gammas = [], []
        for _ in range(cfg.steps_per_task):
            idx = torch.randint(0, x.shape[0], (cfg.batch_size,), generator=self.gen).to(self.device)
            if self.soft_reset is not None:
                stats = self.soft_reset.step(lambda forward: task_loss(task.kind, forward(x[idx]), y[idx]))
                loss = torch.tensor(stats["loss"])
                gammas.append(self.soft_reset.gamma_summary())
            else:
                loss = task_loss(task.kind, self.model(x[idx]), y[idx])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            check_finite("training", loss)
            self.interventions.observe_loss(float(loss.detach()))
            losses.append(float(loss.detach()))
        with torch.no_grad():
            out = self.model(x)
            metrics = {"supervised/task": task.index, "supervised/train_loss": float(task_loss(task.kind, out, y)),
                       "supervised/first_minibatch_loss": losses[0],
                       "supervised/mean_minibatch_loss": float(np.mean(losses))}
            if task.kind == "classification":
                metrics["supervised/train_accuracy"] = float((out.argmax(-1) == y).float().mean())
        for layer in gammas[0] if gammas else []:
            trace = [g[layer] for g in gammas]
            metrics |= {f"soft_reset/gamma_first/{layer}": trace[0], f"soft_reset/gamma_min/{layer}": min(trace),
                        f"soft_reset/gamma_last/{layer}": trace[-1]}
        self.env_steps += cfg.steps_per_task
        self.iteration += 1
        return metrics, []

    def diagnostic_loss(self) -> Tensor:
        task = self.task
        assert task is not None, "diagnostic_loss is called after an iteration, which sets the task"
        x, y = task.inputs[:self.cfg.batch_size].to(self.device), task.targets[:self.cfg.batch_size].to(self.device)
        return task_loss(task.kind, self.model(x), y)

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def recent_inputs(self, size: int) -> Tensor:
        """The current task's first inputs (the stream's first task's before training starts)."""
        inputs = self.task.inputs if self.task is not None else self.envs.probe_inputs(size)
        return inputs[:size].to(self.device)
