"""The agent registry: a name on the command line -> an agent class and its config layers.

An entry names the agent's *family* (the config section and the YAML file with the
paper's defaults, e.g. ``ppo``) and optionally a *variant* file of a few overrides
(``ppo_pfo``). Later agents add entries here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from configs import ConfigError
from envs.suites import rl_suites

if TYPE_CHECKING:  # agents.base imports the plasticity package, which is not needed to read the registry
    from agents.base import Agent

RL_SUITES = rl_suites()


@dataclass(frozen=True)
class AgentSpec:
    name: str
    target: str  # "module:Class", imported on demand
    family: str  # configs/<family>.yaml holds the paper's defaults
    description: str
    variant: str | None = None  # configs/<variant>.yaml, applied after the family and suite files
    suites: tuple[str, ...] = RL_SUITES

    def load(self) -> type[Agent[Any]]:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)


AGENTS: dict[str, AgentSpec] = {spec.name: spec for spec in [
    AgentSpec("ppo", "agents.ppo:PPO", "ppo",
              "PPO as in the PFO paper's code: separate actor/critic, per-minibatch advantage normalisation"),
    AgentSpec("ppo_pfo", "agents.ppo:PPO", "ppo",
              "PPO + Proximal Feature Optimization (Moalla et al. 2024), penultimate layer", variant="ppo_pfo"),
    AgentSpec("ppo_pfo_all", "agents.ppo:PPO", "ppo",
              "PPO + PFO on all layers' pre-activations (Moalla et al. 2024)", variant="ppo_pfo_all"),
    AgentSpec("ppo_lstm", "agents.recurrent_ppo:RecurrentPPO", "ppo",
              "PPO with an LSTM core and truncated BPTT over each rollout (the NLE baseline's core)",
              variant="ppo_lstm"),
    AgentSpec("ppo_finetune", "agents.finetune:FinetunePPO", "ppo",
              "PPO fine-tuning a pre-trained run with a retention method (Wolczyk et al. 2024; runners.finetune)",
              variant="ppo_finetune", suites=("minigrid",)),
    AgentSpec("dqn", "agents.dqn:DQN", "dqn", "DQN with double-Q targets (Mnih et al. 2015; van Hasselt et al. 2016)"),
    AgentSpec("dqn_soft_reset", "agents.dqn:DQN", "dqn", "DQN whose Q-network is trained by the soft-reset learner "
              "(Galashov et al. 2024)", variant="dqn_soft_reset"),
    AgentSpec("rainbow", "agents.rainbow:Rainbow", "rainbow", "Rainbow (Hessel et al. 2018)"),
    AgentSpec("der", "agents.rainbow:Rainbow", "rainbow", "data-efficient Rainbow (van Hasselt et al. 2019)",
              variant="der"),
    AgentSpec("rainbow_macro", "agents.rainbow:Rainbow", "rainbow", "Rainbow + macro-actions (naive)",
              variant="rainbow_macro"),
    AgentSpec("rainbow_masp", "agents.rainbow:Rainbow", "rainbow",
              "Rainbow + macro-actions + meta-learned similarity penalty (Hosu et al. 2025)", variant="rainbow_masp"),
    AgentSpec("online", "agents.supervised:SupervisedLearner", "learner",
              "supervised learner trained online across tasks (add --intervention ...)", suites=("supervised",)),
    AgentSpec("hard_reset", "agents.supervised:SupervisedLearner", "learner",
              "oracle: re-initialise model and optimiser at every task boundary", variant="hard_reset",
              suites=("supervised",)),
    AgentSpec("soft_reset", "agents.supervised:SupervisedLearner", "learner",
              "soft reset with a learned OU drift per layer (Galashov et al. 2024)", variant="soft_reset",
              suites=("supervised",)),
    AgentSpec("soft_reset_param", "agents.supervised:SupervisedLearner", "learner",
              "soft reset, one drift per parameter", variant="soft_reset_param", suites=("supervised",)),
    AgentSpec("soft_reset_prox", "agents.supervised:SupervisedLearner", "learner",
              "soft reset, proximal updates (K_theta steps)", variant="soft_reset_prox", suites=("supervised",)),
    AgentSpec("soft_reset_fixed", "agents.supervised:SupervisedLearner", "learner",
              "ablation: soft reset with gamma held at learner.sr_gamma_init (no gamma learning)",
              variant="soft_reset_fixed", suites=("supervised",)),
    AgentSpec("dt", "agents.dt:DecisionTransformerAgent", "dt",
              "Decision Transformer (Chen et al. 2021): context restarts every episode (baseline)",
              suites=("incontext",)),
    AgentSpec("ad", "agents.dt:AlgorithmDistillation", "ad",
              "Algorithm Distillation (Laskin et al. 2022): cross-episode context from learning histories",
              suites=("incontext",)),
    AgentSpec("ra_dt", "agents.ra_dt:RADT", "ra_dt",
              "Retrieval-Augmented DT (Schmied et al. 2024): cross-attention over retrieved sub-trajectories",
              suites=("incontext",)),
    AgentSpec("ra_dt_no_reweight", "agents.ra_dt:RADT", "ra_dt",
              "ablation: RA-DT retrieving by similarity alone (no return/task reweighting)",
              variant="ra_dt_no_reweight", suites=("incontext",)),
    AgentSpec("ra_dt_random", "agents.ra_dt:RADT", "ra_dt",
              "ablation: RA-DT retrieving random chunks of the memory", variant="ra_dt_random", suites=("incontext",)),
    AgentSpec("ra_dt_lm", "agents.ra_dt:RADT", "ra_dt",
              "RA-DT with domain-agnostic keys (FrozenHopfield + frozen MiniLM)", variant="ra_dt_lm",
              suites=("incontext",)),
    AgentSpec("lram", "agents.action_model:LRAM", "lram",
              "LRAM (Schmied et al. 2025): xLSTM action model, constant-time recurrent inference", suites=("offline",)),
    AgentSpec("dt_kv", "agents.action_model:DecisionTransformerKV", "dt_kv",
              "Transformer action model with a KV cache (LRAM's DT baseline), same tokens", suites=("offline",)),
    AgentSpec("mamba", "agents.action_model:MambaActionModel", "mamba",
              "Mamba action model (mambapy; LRAM's Mamba baseline), same tokens", suites=("offline",)),
    AgentSpec("mtdt", "agents.l2m:MultiTaskDTAgent", "mtdt",
              "L2M's pre-trained multi-task Decision Transformer (one token per action dimension)",
              suites=("offline",)),
    AgentSpec("l2m", "agents.continual:L2M", "l2m",
              "L2M (Schmied et al. 2023): a pool of keys, each with a LoRA of the frozen pre-trained DT",
              suites=("continual",)),
    AgentSpec("ft", "agents.continual:ContinualAgent", "ft", "full fine-tuning, task after task",
              suites=("continual",)),
    AgentSpec("ewc", "agents.continual:EWC", "ewc", "fine-tuning with Elastic Weight Consolidation (lambda 400)",
              suites=("continual",)),
    AgentSpec("lora", "agents.continual:SharedLoRA", "lora", "one LoRA of the frozen DT shared by every task",
              suites=("continual",)),
    AgentSpec("lora_oracle", "agents.continual:OracleLoRA", "lora_oracle",
              "one LoRA per task, chosen by the task id (the upper bound)", suites=("continual",)),
    AgentSpec("l2p", "agents.continual:L2P", "l2p", "L2P: a pool of prompts chosen by key, at every block of the "
              "frozen DT", suites=("continual",)),
    AgentSpec("multitask", "agents.continual:MultiTask", "multitask",
              "fine-tuning on all tasks of the sequence at once (the reference)", suites=("continual",)),
]}


def agents_for(suite: str) -> list[str]:
    return [name for name, spec in AGENTS.items() if suite in spec.suites]


def get_agent(name: str, suite: str) -> AgentSpec:
    if name not in AGENTS or suite not in AGENTS[name].suites:
        raise ConfigError(f"unknown agent '{name}' for the {suite} suite; valid agents: {', '.join(agents_for(suite))}")
    return AGENTS[name]
