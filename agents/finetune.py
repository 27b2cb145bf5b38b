"""Fine-tuning a pre-trained PPO policy with knowledge retention (Wolczyk et al. 2024, ICML).

"Fine-tuning Reinforcement Learning Models is Secretly a Forgetting Mitigation Problem" (Wolczyk, Cupiał,
Ostaszewski, Bortkiewicz, Zając, Pascanu, Kuciński, Miłoś); their code: github ``BartekCupial/finetuning-RL-as-CL``
(``sf_examples/nethack/algo/learning/learner.py``, read, not copied). A policy pre-trained on the *far* part of a
task is fine-tuned with PPO on the whole task, whose episodes start in the *near* part; the paper's claim is that
plain fine-tuning forgets the far part before it gets there, and that retention methods keep it. Methods
(``finetune.method``), each a term added to the PPO loss of every minibatch (``PPO.auxiliary_loss``):

* ``ft``: plain fine-tuning (all weights start from the pre-trained ones, nothing else);
* ``freeze``: the encoder frozen (their ``--freeze "{'encoder': 0}"``): every layer of the body before its last
  hidden layer (the convolutions of ``minigrid_cnn``) keeps its pre-trained weights;
* ``kickstart``: ``coef * KL(pi_pre(.|s) || pi(.|s))`` on the student's own minibatch states (their
  ``_kickstarting_loss``: ``F.kl_div(log pi, log pi_pre, log_target=True)``); ``coef`` starts at 0.75 and is
  multiplied by 0.99998 after every optimiser step, never below 0.33 (their README's command);
* ``bc``: ``coef * CE(pi(.|s), a)`` on minibatches of the pre-training data (their ``_supervised_loss``; the
  data here: states and actions of the pre-trained policy on the far part, ``data_steps`` of them). Their code
  decays this coefficient with a typo that leaves it constant (``supervised_loss_decay *= supervised_loss_decay``);
  here it is constant;
* ``ewc``: ``lambda / 2 * sum_i F_i (theta_i - theta*_i)^2`` over the policy's parameters (EWC, Kirkpatrick et
  al. 2017), ``F`` the diagonal Fisher of the pre-trained policy on the pre-training data (per-sample gradients of
  ``log pi(a|s)`` at the data's actions, squared and averaged). Their EWC code is not released: lambda is this
  suite's choice (configs/ppo_finetune.yaml).

* ``scratch``: the reference, PPO from a fresh initialisation on the whole task (the pre-trained run only serves
  the far-part comparisons: its policy's far success, the KL from it).

The critic starts from the pre-trained one as well (their runs load the whole actor-critic). Not implemented: their
critic-only warm-up (``--skip_train``, 25M of 500M steps in the README's run).

Forgetting is measured by the evaluation phase (``run.eval_interval``): episodes started in the far part
(``far_env``), their success rate against the pre-trained policy's, and the KL from the pre-trained policy to the
fine-tuned one on the pre-training data's far-part states.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from agents.ppo import PPO, masked_mean
from configs import ConfigError, param

METHODS = ("ft", "freeze", "kickstart", "bc", "ewc", "scratch")
WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass
class FinetuneConfig:
    """Which retention method, the pre-trained policy, and the far part the forgetting is measured on."""
    method: str = param("Retention method: " + ", ".join(METHODS), choices=METHODS)
    pretrained: str = param("Run directory of the pre-trained policy (its checkpoints/latest.pt); runners.finetune "
                            "pre-trains one on demand")
    far_env: str = param("The far part's environment id: evaluation episodes and the pre-training data")
    kickstart_coef: float = param("kickstart: initial KL coefficient", min=0.0)
    kickstart_decay: float = param("kickstart: coefficient multiplied by this after every optimiser step",
                                   min=0.0, max=1.0)
    kickstart_min: float = param("kickstart: the coefficient's floor", min=0.0)
    bc_coef: float = param("bc: cross-entropy coefficient", min=0.0)
    ewc_lambda: float = param("ewc: lambda", min=0.0)
    data_steps: int = param("Pre-training data: steps of the pre-trained policy on far_env (bc, ewc, far KL)", min=1)
    data_envs: int = param("Environments the pre-training data and the far evaluation step in parallel", min=1)


def encoder_layers(net: nn.Sequential) -> list[nn.Module]:
    """The modules of a body before its last hidden weight layer (``minigrid_cnn``: the convolutions)."""
    children = [m for name, m in net.named_children() if name != "head"]
    weights = [i for i, m in enumerate(children) if isinstance(m, WEIGHT_LAYERS)]
    return children[:weights[-1]] if weights else []


def kickstart_coefficient(initial: float, decay: float, floor: float, steps: int) -> float:
    """``max(initial * decay ** steps, floor)``: their coefficient after ``steps`` optimiser steps."""
    return max(initial * decay ** steps, floor)


def ewc_penalty(params: list[Tensor], anchors: list[Tensor], fisher: list[Tensor]) -> Tensor:
    """``sum_i F_i (theta_i - theta*_i)^2`` (without lambda / 2)."""
    return torch.stack([(f * (p - a) ** 2).sum() for p, a, f in zip(params, anchors, fisher, strict=True)]).sum()


def diagonal_fisher(net: nn.Module, obs: Tensor, actions: Tensor, log_prob: Any, chunk: int = 256) -> list[Tensor]:
    """The mean over samples of ``(d log pi(a_n | s_n) / d theta)^2`` per parameter of ``net``, one gradient per
    sample (``torch.func``); ``log_prob(net_output (1, ...), action (1,))`` is the policy's log-probability."""
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in net.named_parameters() if n in names}

    def one(p: dict[str, Tensor], x: Tensor, a: Tensor) -> Tensor:
        return log_prob(functional_call(net, p, (x[None],)), a[None])[0]

    per_sample = vmap(grad(one), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(0, len(obs), chunk):
        grads = per_sample(params, obs[i:i + chunk], actions[i:i + chunk])
        for n in names:
            total[n] += grads[n].pow(2).sum(0)
    return [total[n] / len(obs) for n in names]


class FinetunePPO(PPO):
    """PPO starting from a pre-trained run, with one retention method (module docstring)."""

    SECTIONS = {"finetune": FinetuneConfig}
    STATE_KEYS = (*PPO.STATE_KEYS, "sgd_steps", "pretrained_far")
    ACTION_SPACES = ("Discrete",)

    def setup(self, networks: dict[str, nn.Module]) -> None:
        self.ft: FinetuneConfig = self.sections["finetune"]
        super().setup(networks)
        pretrained = self._pretrained_state()
        self.teacher = copy.deepcopy(self.actor).requires_grad_(False)
        self.teacher.load_state_dict(pretrained["actor"])
        if self.ft.method != "scratch":
            self.actor.load_state_dict(pretrained["actor"])
            self.critic.load_state_dict(pretrained["critic"])
        self.teacher_tail = cast(nn.Sequential, self.teacher[1:])
        self.sgd_steps = 0
        self.pretrained_far: float | None = None  # the pre-trained policy's far success (first evaluation)

        def count(*_: Any) -> None:
            self.sgd_steps += 1
        self._optimizers[0].register_step_post_hook(count)
        if self.ft.method == "freeze":
            for net in (self.actor, self.critic):
                for module in encoder_layers(net):
                    module.requires_grad_(False)
        self.data_obs, self.data_actions = self._pretraining_data()
        if self.ft.method == "ewc":
            params = [p for p in self.actor.parameters()]
            self.anchors = [p.detach().clone() for p in params]
            self.fisher = diagonal_fisher(self.actor, self.data_obs, self.data_actions,
                                          lambda out, a: self.dist.log_prob(self._params(out), a))

    def _pretrained_state(self) -> dict[str, dict[str, Tensor]]:
        """The pre-trained run's actor and critic weights, checked against this run's networks."""
        from runners.rundir import open_run
        if not self.ft.pretrained:
            raise ConfigError("finetune.pretrained names no run directory: give --pretrained RUN_DIR "
                              "(python -m runners.finetune pre-trains one on demand)")
        run = open_run(Path(self.ft.pretrained))
        state = run.load_checkpoint(run.ckpt_dir / "latest.pt")["agent"]
        for name, net in (("actor", self.actor), ("critic", self.critic)):
            mine = net.state_dict()
            theirs = state.get(name, {})
            wrong = [k for k, v in mine.items() if k not in theirs or theirs[k].shape != v.shape]
            if wrong:
                raise ConfigError(f"the pre-trained run {run.path} has another network or observation space "
                                  f"({run.meta.get('agent')} on {run.meta.get('env')}: its {name}'s '{wrong[0]}' "
                                  f"does not match this run's)")
        return {"actor": state["actor"], "critic": state["critic"]}

    def _far_envs(self, num_envs: int, seed: int):
        from envs import make_vec_env, plain_config
        envs = make_vec_env("minigrid", plain_config("minigrid", self.ft.far_env, num_envs), seed)
        if envs.single_observation_space.shape != self.envs.single_observation_space.shape:
            raise ConfigError(f"finetune.far_env {self.ft.far_env} observes {envs.single_observation_space.shape}, "
                              f"this run's environment {self.envs.single_observation_space.shape}")
        return envs

    @torch.no_grad()
    def _pretraining_data(self) -> tuple[Tensor, Tensor]:
        """(states, actions) of the pre-trained policy acting on the far part: ``data_steps`` transitions (the
        reset transitions of autoreset left out), sampled with a generator seeded by the run's seed."""
        envs = self._far_envs(self.ft.data_envs, self.seed + 10_000)
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 10_000)
        obs = torch.from_numpy(envs.reset()).to(self.device)
        states: list[Tensor] = []
        actions: list[Tensor] = []
        done = torch.zeros(envs.num_envs, dtype=torch.bool, device=self.device)
        while sum(int(a.numel()) for a in actions) < self.ft.data_steps:
            action = self.dist.sample(self._params(self.teacher(obs)), gen)
            states.append(obs[~done])
            actions.append(action[~done])
            step = envs.step(action.cpu().numpy())
            done = torch.from_numpy(step.terminated | step.truncated).to(self.device)
            obs = torch.from_numpy(step.obs).to(self.device)
        envs.close()
        return torch.cat(states)[:self.ft.data_steps], torch.cat(actions)[:self.ft.data_steps]

    # -- the retention losses ------------------------------------------------------------------
    def auxiliary_loss(self, x: Tensor, params: Tensor, weight: Tensor
                       ) -> tuple[Tensor, dict[str, Tensor | float]] | None:
        ft = self.ft
        if ft.method == "kickstart":
            with torch.no_grad():
                teacher = self._params(self.teacher_tail(x))
            kl = masked_mean(self.dist.kl(teacher, params), weight)
            coef = kickstart_coefficient(ft.kickstart_coef, ft.kickstart_decay, ft.kickstart_min, self.sgd_steps)
            return coef * kl, {"losses/kickstart_kl": kl, "losses/kickstart_coef": coef}
        if ft.method == "bc":
            idx = torch.randint(len(self.data_obs), (self.cfg.minibatch_size,), generator=self.gen,
                                device=self.device)
            student = self._policy(self._scaled(self.data_obs[idx]))[0]
            ce = -self.dist.log_prob(student, self.data_actions[idx]).mean()
            return ft.bc_coef * ce, {"losses/bc": ce}
        if ft.method == "ewc":
            penalty = ewc_penalty(list(self.actor.parameters()), self.anchors, self.fisher)
            return ft.ewc_lambda / 2 * penalty, {"losses/ewc": penalty}
        return None

    # -- forgetting, measured ------------------------------------------------------------------
    @torch.no_grad()
    def far_success(self, net: nn.Module, episodes: int, seed: int) -> tuple[float, float]:
        """(success rate, mean return) of ``net``'s sampled actions over ``episodes`` far-start episodes, each
        environment playing its share in order (``runners.evaluate.rollout``), so that quick episodes are not
        over-counted."""
        from types import SimpleNamespace

        from runners.evaluate import rollout

        def actions(obs: np.ndarray, deterministic: bool, generator: torch.Generator) -> np.ndarray:
            params = self._params(net(torch.from_numpy(obs).to(self.device))).cpu()
            return self.dist.sample(params, generator).numpy()

        envs = self._far_envs(min(self.ft.data_envs, episodes), seed)
        try:
            played = rollout(SimpleNamespace(envs=envs, policy_actions=actions), episodes, False, seed)
        finally:
            envs.close()
        ret = np.array([e["return"] for e in played])
        return float((ret > 0).mean()), float(ret.mean())

    def evaluate(self, episodes: int):
        from agents.base import Evaluation
        seed = self.seed + 20_000 + self.iteration
        if self.pretrained_far is None:
            self.pretrained_far = self.far_success(self.teacher, episodes, self.seed + 20_000)[0]
        success, ret = self.far_success(self.actor, episodes, seed)
        with torch.no_grad():
            x = self._scaled(self.data_obs)
            kl = float(self.dist.kl(self._params(self.teacher_tail(x)), self._policy(x)[0]).mean())
        far = {"success": success, "return": ret, "success_pretrained": self.pretrained_far, "kl_from_pretrained": kl}
        return Evaluation({f"far/{k}": v for k, v in far.items()}, {"far": far})
