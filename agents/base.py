"""What a runner needs from an agent, the lifecycle every agent goes through, and the errors it may raise."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Generic, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from configs import ConfigError
from envs import Episode
from plasticity.hooks import Inputs
from plasticity.interventions import Interventions
from plasticity.monitor import DiagnosticsConfig, PlasticityMonitor

ConfigT = TypeVar("ConfigT")


@dataclass
class Evaluation:
    """What one evaluation phase returns: scalars (logged under ``eval/``) and a JSON-able record of the
    details (e.g. return per task and episode index), kept in the run's ``eval.json``."""
    metrics: dict[str, float]
    record: dict[str, Any] = field(default_factory=dict)


class NonFiniteLossError(RuntimeError):
    """A loss or network output became NaN or infinite; the run stops and keeps its last good checkpoint."""


class Agent(ABC, Generic[ConfigT]):
    """An on- or off-policy learner that advances in *iterations* (collect, then update).

    Subclasses set ``section`` (the config section holding their hyperparameters) and
    ``config_class`` (its dataclass). The runner owns the loop, logging, checkpoints and
    the plasticity monitor; the agent owns its networks, optimisers, buffers and RNG.

    The constructor is a template every agent goes through, so that no step can be forgotten:

    1. interventions the agent declares unsupported (``UNSUPPORTED_INTERVENTIONS``) are refused, and so is
       an action space outside ``ACTION_SPACES``;
    2. :meth:`wrap_envs` may wrap the environments (macro-actions);
    3. :meth:`build_networks` returns the agent's freshly built networks; each passes through
       ``interventions.prepare`` (normalisation layers) and moves to the device;
    4. :meth:`setup` receives the prepared networks and builds optimisers, buffers and RNGs; every
       parameter of :meth:`networks` must belong to a prepared network (checked);
    5. the interventions attach to :meth:`networks` and :meth:`optimizers`, with
       :meth:`recent_inputs` as the batch they inspect (ReDo); the runner's plasticity monitor
       attaches to the same through :meth:`attach_monitor`;
    6. checkpoints hold every network of :meth:`networks`, every optimiser of :meth:`optimizers`,
       ``iteration``, ``env_steps`` and the attributes named in ``STATE_KEYS``, saved and restored by
       :meth:`state_dict` / :meth:`load_state_dict`.
    """

    section: ClassVar[str]
    config_class: ClassVar[type]
    #: attributes held in checkpoints besides the networks and optimisers: buffers and anything else
    #: with ``state_dict``/``load_state_dict`` through those, RNGs through their state, tensors on the
    #: CPU, plain values as they are; an attribute that is None stays None
    STATE_KEYS: ClassVar[tuple[str, ...]] = ()
    #: intervention name -> why this agent cannot apply it (refused at start-up)
    UNSUPPORTED_INTERVENTIONS: ClassVar[dict[str, str]] = {}
    #: config sections the agent reads besides its own (name -> dataclass), e.g. an offline agent's
    #: ``dataset``; they join the run's config (files, --set, config.yaml) and reach ``self.sections``
    SECTIONS: ClassVar[dict[str, type]] = {}
    #: the action spaces (gymnasium space classes, by name) the agent can act in; others are refused at start-up
    ACTION_SPACES: ClassVar[tuple[str, ...]] = ("Discrete",)
    #: what ``env_steps`` and the budget count: agent steps (online agents) or gradient updates (offline)
    budget_unit: ClassVar[str] = "step"
    #: budget units (``env_steps``) that one iteration advances
    steps_per_iteration: int
    #: set by the runner: called on diagnostics iterations once the batch is collected, before the update
    before_update: Callable[[], None] | None = None

    def __init__(self, cfg: ConfigT, envs: Any, device: torch.device, total_steps: int, seed: int,
                 interventions: Interventions, sections: dict[str, Any] | None = None):
        refused = [n for n in interventions.names if n in self.UNSUPPORTED_INTERVENTIONS]
        if refused:
            supported = [n for n in interventions.available() if n not in self.UNSUPPORTED_INTERVENTIONS]
            raise ConfigError(f"{type(self).__name__} does not support the intervention '{refused[0]}' "
                              f"({self.UNSUPPORTED_INTERVENTIONS[refused[0]]}); it supports: {', '.join(supported)}")
        missing = [name for name in self.SECTIONS if name not in (sections or {})]
        if missing:
            raise TypeError(f"{type(self).__name__} reads the config sections {missing}: pass them in sections=")
        self.cfg = cfg
        self.sections = {name: (sections or {})[name] for name in self.SECTIONS}
        self.interventions = interventions
        self.device = device
        self.total_steps = total_steps
        self.seed = seed
        self.env_steps = 0
        self.iteration = 0
        space = getattr(envs, "single_action_space", None)
        if space is not None and type(space).__name__ not in self.ACTION_SPACES:
            raise ConfigError(f"{type(self).__name__} acts in {' or '.join(self.ACTION_SPACES)} action spaces; this "
                              f"environment's is {space} (PPO takes Box actions)")
        self.envs = self.wrap_envs(envs)
        prepared = {name: interventions.prepare(net).to(device) for name, net in self.build_networks().items()}
        self.setup(prepared)
        built = {id(p) for net in prepared.values() for p in net.parameters()}
        for name, net in self.networks().items():
            if any(id(p) not in built for p in net.parameters()):
                raise TypeError(f"{type(self).__name__}.networks()['{name}'] has parameters that build_networks() "
                                "did not return, so the interventions never prepared them")
        interventions.batch_fn = lambda: self.recent_inputs(self.update_batch_size())
        interventions.attach(self.networks(), self.optimizers())

    # -- the lifecycle ---------------------------------------------------------------------------
    def wrap_envs(self, envs: Any) -> Any:
        """The environments the agent acts in (default: as given)."""
        return envs

    @abstractmethod
    def build_networks(self) -> dict[str, nn.Module]:
        """The agent's networks, freshly built (before interventions and optimisers)."""

    @abstractmethod
    def setup(self, networks: dict[str, nn.Module]) -> None:
        """Keep the prepared ``networks``; build optimisers, buffers and RNGs."""

    def attach_monitor(self, cfg: DiagnosticsConfig) -> PlasticityMonitor:
        """The plasticity monitor over this agent's networks and optimisers (with its diagnostic loss);
        the runner holds it and decides when it measures."""
        return PlasticityMonitor(self.networks(), self.optimizers(), cfg, loss_fn=self.diagnostic_loss)

    # -- what the runner calls -------------------------------------------------------------------
    def policy_actions(self, obs: np.ndarray, deterministic: bool, generator: torch.Generator) -> np.ndarray:
        """The trained policy's actions for a batch of observations of :attr:`envs`, as they take them
        (``runners.evaluate``): the most likely action with ``deterministic``, else one drawn from the policy."""
        raise ConfigError(f"the {type(self).__name__} agent has no policy that runners.evaluate can roll out")

    @abstractmethod
    def iterate(self, diagnose: bool) -> tuple[dict[str, float], list[Episode]]:
        """Collect experience and update once; return scalar metrics and finished episodes.

        With ``diagnose`` the agent adds its own costly diagnostics (trust region, KL, ...).
        """

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Named networks for the interventions and the plasticity monitor (each takes the agent's
        :meth:`recent_inputs`: raw observations, or named sequence tensors)."""

    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]: ...

    @abstractmethod
    def recent_inputs(self, size: int) -> Inputs | None:
        """Up to ``size`` of the newest inputs the agent trained or acted on (None before there are any):
        the batch ReDo inspects, and the diagnostics' probe batch (the runner keeps a copy). Sequence
        models return named tensors of ``size`` sequences (``net(**inputs)``)."""

    def evaluate(self, episodes: int) -> Evaluation:
        """An evaluation phase (``episodes`` per task), scheduled by the runner every ``run.eval_interval``
        budget units and at the end; agents without one leave this as it is (an interval is refused)."""
        raise NotImplementedError(f"{type(self).__name__} has no evaluation phase")

    @classmethod
    def can_evaluate(cls) -> bool:
        return cls.evaluate is not Agent.evaluate

    def update_batch_size(self) -> int:
        """Inputs per gradient update (what an intervention's inspection batch holds)."""
        return int(getattr(self.cfg, "batch_size"))

    def autocast(self) -> torch.autocast:
        """bf16 autocast for forward passes when the config's ``precision`` is "bf16"; otherwise inactive."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=getattr(self.cfg, "precision", "fp32") == "bf16")

    def images(self) -> dict[str, np.ndarray]:
        """Named 2-D arrays to log as TensorBoard images on diagnostics iterations (e.g. a similarity matrix)."""
        return {}

    def current_batch(self) -> Tensor | None:
        """Inputs of the batch the current update trains on (PPO: the rollout), for the diagnostics the
        PFO paper takes at the start and end of each update; None for agents without one such batch."""
        return None

    def diagnostic_loss(self) -> Tensor:
        """The agent's training loss on recent data, with a graph (for Hessian diagnostics)."""
        raise NotImplementedError(f"{type(self).__name__} provides no diagnostic loss")

    def restart_episodes(self, obs: np.ndarray) -> None:
        """After a resume whose environments could not be restored: continue from fresh resets (agents
        whose environments cannot save their state must override this)."""
        raise NotImplementedError(f"{type(self).__name__} cannot continue from fresh environment resets")

    # -- checkpoints -----------------------------------------------------------------------------
    def checkpointed(self) -> tuple[str, ...]:
        return ("iteration", "env_steps", *self.STATE_KEYS)

    def state_dict(self) -> dict[str, Any]:
        """Each network's state under its name, the optimisers' under ``optimizers``, then the attributes."""
        networks = self.networks()
        clash = set(networks) & {"optimizers", *self.checkpointed()}
        if clash:
            raise TypeError(f"{type(self).__name__}: network names {sorted(clash)} clash with checkpointed attributes")
        return {**{name: net.state_dict() for name, net in networks.items()},
                "optimizers": [opt.state_dict() for opt in self.optimizers()],
                **{key: export_state(getattr(self, key)) for key in self.checkpointed()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        networks, optimizers = self.networks(), self.optimizers()
        missing = [key for key in (*networks, "optimizers", *self.checkpointed()) if key not in state]
        if missing or len(state["optimizers"]) != len(optimizers):
            raise ConfigError(f"the checkpoint does not hold the state of a {type(self).__name__} agent like this one "
                              f"(missing: {', '.join(missing) or 'none'}): it was written by another agent or version")
        for name, net in networks.items():
            net.load_state_dict(state[name])
        for opt, saved in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(saved)
        for key in self.checkpointed():
            setattr(self, key, import_state(getattr(self, key), state[key]))


def export_state(value: Any) -> Any:
    """A checkpointable copy of one attribute (see ``Agent.STATE_KEYS``)."""
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, np.random.Generator):
        return value.bit_generator.state
    if isinstance(value, Tensor):
        return value.cpu()
    if hasattr(value, "state_dict"):
        return value.state_dict()
    return value


def import_state(current: Any, saved: Any) -> Any:
    """Restore one attribute from ``saved``: in place where it has state, else the saved value."""
    if current is None:
        return None
    if isinstance(current, torch.Generator):
        current.set_state(saved)
    elif isinstance(current, np.random.Generator):
        current.bit_generator.state = saved
    elif isinstance(current, Tensor):
        return saved.to(current.device)
    elif hasattr(current, "load_state_dict"):
        current.load_state_dict(saved)
    else:
        return saved
    return current


def check_finite(name: str, value: Tensor) -> None:
    """Raise NonFiniteLossError if ``value`` holds a NaN or an infinity."""
    if not bool(torch.isfinite(value).all()):
        bad = value.detach().flatten()[~torch.isfinite(value.detach().flatten())][0]
        raise NonFiniteLossError(f"the {name} became non-finite ({float(bad)})")
