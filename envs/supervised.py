"""Non-stationary supervised task streams, built offline: the controlled lab for plasticity.

Data: sklearn's bundled 8x8 digits (1,797 images, 10 classes; no download) or synthetic
Gaussian inputs. Streams (a new task every ``steps_per_task`` optimiser steps of the learner):

* ``random_labels``: each task re-draws a ``label_fraction`` share of the labels uniformly at
  random (1.0: pure memorisation, the published random-label setting of Lyle et al.);
* ``permuted``: each task applies a new random permutation to the input pixels, true labels;
* ``offset_regression``: regress ``offset`` + the 10 outputs of a freshly drawn random network
  (a new network per task), MSE loss (Lyle et al. 2024's large-target-offset mechanism);
* ``composite``: the three in turn.

The published versions use CIFAR-10 and MNIST; these offline substitutes are smaller and say
so wherever results are reported. A stream is deterministic given its seed and saves its
state by value, so runs resume exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from configs import ConfigError, param

STREAMS = ("random_labels", "permuted", "offset_regression", "composite")


@dataclass
class TaskStreamConfig:
    """Which task stream the supervised learner faces."""
    id: str = param("Stream: random_labels, permuted, offset_regression or composite", choices=STREAMS)
    data: str = param("Inputs: digits (sklearn's 8x8 digits) or synthetic (Gaussian)", choices=("digits", "synthetic"))
    label_fraction: float = param("random_labels: share of labels re-drawn each task", min=0.0, max=1.0)
    offset: float = param("offset_regression: constant added to the random-network targets")
    synthetic_samples: int = param("synthetic: number of inputs", min=10)
    synthetic_dim: int = param("synthetic: input dimension (a square number, for the CNN)", min=4)


class Task(NamedTuple):
    # a field named like the method tuple.index: mypy reports it as an incompatible override
    index: int  # type: ignore[assignment]
    kind: str  # "classification" or "regression"
    inputs: Tensor  # (n, 1, s, s) images
    targets: Tensor  # class indices, or (n, 10) regression targets


def load_inputs(cfg: TaskStreamConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (n, 1, s, s) float32 in [0, 1] or standardised, labels (n,)) for the chosen data."""
    if cfg.data == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ConfigError("the digits data needs scikit-learn: pip install scikit-learn") from None
        digits = load_digits()
        return (digits.images / 16.0).astype(np.float32)[:, None], digits.target.astype(np.int64)
    side = int(round(cfg.synthetic_dim ** 0.5))
    if side * side != cfg.synthetic_dim:
        raise ConfigError(f"env.synthetic_dim={cfg.synthetic_dim} must be a square number (16, 64, 256, ...)")
    rng = np.random.default_rng(seed + 12345)
    x = rng.standard_normal((cfg.synthetic_samples, 1, side, side)).astype(np.float32)
    return x, rng.integers(0, 10, cfg.synthetic_samples)


class TaskStream:
    """An endless, seeded sequence of tasks over one fixed set of inputs."""

    can_save_state = True
    frame_skip = 1
    num_envs = 1

    def __init__(self, cfg: TaskStreamConfig, seed: int):
        self.cfg = cfg
        x, y = load_inputs(cfg, seed)
        self.inputs = torch.from_numpy(x)
        self.labels = torch.from_numpy(y)
        self.input_shape = tuple(self.inputs.shape[1:])
        self.num_outputs = 10
        self.rng = np.random.default_rng(seed)
        self.index = 0

    def kind_of(self, index: int) -> str:
        if self.cfg.id == "composite":
            return ("random_labels", "permuted", "offset_regression")[index % 3]
        return self.cfg.id

    def next_task(self) -> Task:
        kind, n = self.kind_of(self.index), self.inputs.shape[0]
        if kind == "random_labels":
            labels = self.labels.clone()
            redraw = self.rng.random(n) < self.cfg.label_fraction
            labels[torch.from_numpy(redraw)] = torch.from_numpy(self.rng.integers(0, 10, int(redraw.sum())))
            task = Task(self.index, "classification", self.inputs, labels)
        elif kind == "permuted":
            perm = torch.from_numpy(self.rng.permutation(int(np.prod(self.input_shape))))
            x = self.inputs.reshape(n, -1)[:, perm].reshape(self.inputs.shape)
            task = Task(self.index, "classification", x, self.labels)
        else:
            gen = torch.Generator().manual_seed(int(self.rng.integers(2**31)))
            target_net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(self.input_shape)), 64), nn.ReLU(),
                                       nn.Linear(64, self.num_outputs))
            with torch.no_grad():
                for p in target_net.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) / max(1, p.shape[-1]) ** 0.5)
                targets = self.cfg.offset + target_net(self.inputs)
            task = Task(self.index, "regression", self.inputs, targets)
        self.index += 1
        return task

    def probe_inputs(self, size: int) -> Tensor:
        return self.inputs[:size].clone()

    # -- the parts of the VecEnv interface the runner uses ------------------------------------
    def reset(self) -> None:
        return None

    def get_state(self) -> dict[str, Any]:
        return {"backend": "tasks", "index": self.index, "rng": self.rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        self.index = state["index"]
        self.rng.bit_generator.state = state["rng"]

    def close(self) -> None:
        pass
