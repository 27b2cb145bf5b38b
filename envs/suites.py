"""The suite registry: each suite (atari, minatar, classic, supervised, ...) is one :class:`Suite` record.

A record says everything the rest of the code needs to know about a suite: its ``env`` config
section (a dataclass), its ids (the list, and how a user-given id is matched to one of them, with
the error that lists the valid ones), the factory that builds its batched environment, and what
the command line needs (the default agent, a one-line description for ``--help``, whether the
RL agents apply). :func:`envs.make_vec_env`, :func:`envs.canonical_id`, ``runners.cli`` and
``runners.sweep`` dispatch through :func:`get_suite`; nothing else branches on a suite's name.

To add a suite: write its back end (a :class:`envs.base.VecEnv`), register a ``Suite`` at the
end of this module, add ``configs/<name>.yaml`` (its run, env and diagnostics defaults) and the
three-line entry point ``runners/<name>.py``. Back ends are imported only when a suite is used.
"""
from __future__ import annotations

import difflib
import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from configs import ConfigError


@dataclass(frozen=True)
class Suite:
    name: str
    description: str  # one line, for --help and the README
    config: str  # "module:Class" of the env section's dataclass, imported on demand
    ids: Callable[[], list[str]]  # the valid env ids (may import the back end)
    make: Callable[[Any, str, int], Any]  # (env config, canonical id, seed) -> VecEnv (or TaskStream)
    default_agent: str
    id_kind: str  # "Atari game": how errors name an id
    ids_name: str = "ids"  # "valid <ids_name>: ..." in errors
    alias: Callable[[str], str] = lambda env_id: env_id  # user id -> the name compared with ids()
    ignore_case: bool = True
    rl: bool = True  # the RL agents (agents.RL_SUITES) run on it
    budget: str = "steps"  # what run.total_steps counts: "steps" (--total-steps) or "updates" (--total-updates)
    prepare: Callable[[Any], None] = lambda cfg: None  # runs before ids are looked up (imports env.module)
    family_configs: str = ""  # folder of configs/ with the per-agent overrides (default: the suite's name)
    #: (id, num_envs) -> the suite's plain env section, no protocol (random-policy baselines, far-part evaluations)
    plain: Callable[[str, int], Any] | None = None
    #: the env.backend that renders colour frames, where the suite's default one cannot (runners.evaluate --video)
    render_backend: str = ""
    #: above this many ids, an unknown id's error names the closest ones rather than all
    LIST_ALL: int = 40

    def config_class(self) -> type:
        module, _, cls = self.config.partition(":")
        return getattr(importlib.import_module(module), cls)

    def canonical_id(self, env_id: str) -> str:
        """The suite's spelling of a user-given id, or ConfigError listing the valid ones."""
        ids = self.ids()
        wanted = self.alias(env_id)
        for known in ids:
            if known == wanted or (self.ignore_case and known.lower() == wanted.lower()):
                return known
        if len(ids) <= self.LIST_ALL:
            raise ConfigError(f"unknown {self.id_kind} '{env_id}'; valid {self.ids_name}: {', '.join(ids)}")
        close = difflib.get_close_matches(wanted, ids, n=6, cutoff=0.5)
        hint = f"closest {self.ids_name}: {', '.join(close)}" if close else f"none of the {self.ids_name} is close"
        raise ConfigError(f"unknown {self.id_kind} '{env_id}'; {hint} (python -m runners.{self.name} --help lists "
                          f"all {len(ids)})")


REGISTRY: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    REGISTRY[suite.name] = suite
    return suite


def get_suite(name: str) -> Suite:
    if name not in REGISTRY:
        raise ConfigError(f"unknown suite '{name}'; valid suites: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def rl_suites() -> tuple[str, ...]:
    return tuple(name for name, suite in REGISTRY.items() if suite.rl)


# -- the suites ------------------------------------------------------------------------------

def _plain_env(env_id: str, num_envs: int):
    """An Atari/MinAtar/classic env section with no protocol: no frame skip, sticky actions, no-ops or clipping."""
    from envs import EnvConfig
    return EnvConfig(id=env_id, backend="envpool", num_envs=num_envs, threads=0, frame_skip=1, max_pool=True,
                     sticky_action_prob=0.0, noop_max=1, fire_reset=False, episodic_life=False, reward_clip=False,
                     max_episode_frames=0, full_action_space=False, image_size=84, stack=1, async_halves=False)


def _plain_gym(env_id: str, num_envs: int):
    from envs.gym_envs import GymEnvConfig
    return GymEnvConfig(id=env_id, module="", num_envs=num_envs, max_episode_steps=0, normalize_obs=False,
                        obs_norm_steps=1, time_aware=False, reward_clip=False)


def _plain_minigrid(env_id: str, num_envs: int):
    from envs.minigrid import MiniGridConfig
    return MiniGridConfig(id=env_id, backend="auto", num_envs=num_envs, threads=0, max_episode_steps=0,
                          reward_clip=False)


def _atari_games() -> list[str]:
    from envs.atari import atari_games
    return atari_games()


def _make_atari(cfg, env_id: str, seed: int):
    import dataclasses

    from envs.atari import ALEAtari, EnvpoolAtari
    from envs.base import SplitVecEnv
    cfg.id = env_id
    kind = EnvpoolAtari if cfg.backend == "envpool" else ALEAtari
    if not cfg.async_halves:
        return kind(cfg, seed)
    if cfg.num_envs < 2:
        raise ConfigError(f"env.async_halves needs at least 2 environments, got env.num_envs={cfg.num_envs}")
    k = cfg.num_envs // 2  # both back ends seed environment i with seed + i: the same games as one batch
    return SplitVecEnv(kind(dataclasses.replace(cfg, num_envs=k), seed),
                       kind(dataclasses.replace(cfg, num_envs=cfg.num_envs - k), seed + k))


def _minatar_games() -> list[str]:
    from envs.gym_envs import MINATAR_GAMES
    return list(MINATAR_GAMES)


def _make_minatar(cfg, env_id: str, seed: int):
    import gymnasium as gym

    from envs.gym_envs import GymVecEnv, minatar_obs
    try:
        from minatar.gym import register_envs
    except ImportError:
        raise ConfigError("the MinAtar suite needs the 'minatar' package: pip install minatar") from None
    if "MinAtar/Breakout-v1" not in gym.registry:
        register_envs()
    gym_id = f"MinAtar/{env_id}-v{0 if cfg.full_action_space else 1}"
    if cfg.full_action_space:  # v0 is MinAtar's full action set, not an outdated version
        warnings.filterwarnings("ignore", message=r".*MinAtar/\w+-v0 is out of date")
    limit = cfg.max_episode_frames or None
    return GymVecEnv(lambda **kw: gym.make(gym_id, max_episode_steps=limit, **kw), cfg.num_envs, seed, minatar_obs)


def _classic_ids() -> list[str]:
    from envs.gym_envs import CLASSIC_CONTROL
    return list(CLASSIC_CONTROL)


def _make_classic(cfg, env_id: str, seed: int):
    import gymnasium as gym

    from envs.gym_envs import GymVecEnv
    limit = cfg.max_episode_frames or None
    return GymVecEnv(lambda **kw: gym.make(env_id, max_episode_steps=limit, **kw), cfg.num_envs, seed)


def _streams() -> list[str]:
    from envs.supervised import STREAMS
    return list(STREAMS)


def _make_stream(cfg, env_id: str, seed: int):
    from envs.supervised import TaskStream
    return TaskStream(cfg, seed)


register(Suite("atari", "Atari 2600 games through envpool or ale-py", "envs:EnvConfig", _atari_games, _make_atari,
               default_agent="ppo_pfo", id_kind="Atari game", ids_name="games",
               alias=lambda env_id: env_id.removeprefix("ALE/").split("-")[0], plain=_plain_env,
               render_backend="ale"))
register(Suite("minatar", "MinAtar games, in-process", "envs:EnvConfig", _minatar_games, _make_minatar,
               default_agent="ppo_pfo", id_kind="MinAtar game", ids_name="games",
               alias=lambda env_id: env_id.removeprefix("MinAtar/").split("-")[0], plain=_plain_env))
register(Suite("classic", "gymnasium classic control", "envs:EnvConfig", _classic_ids, _make_classic,
               default_agent="ppo_pfo", id_kind="classic-control environment", plain=_plain_env))
def import_env_modules(cfg) -> None:
    """Import the modules named in ``env.module`` (comma-separated): they register environments with gymnasium."""
    for name in filter(None, (m.strip() for m in cfg.module.split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"env.module: cannot import '{name}' ({exc})") from None


def _gym_ids() -> list[str]:
    import gymnasium as gym
    return sorted(gym.registry)


def _make_gym(cfg, env_id: str, seed: int):
    import gymnasium as gym

    from envs.gym_envs import GymVecEnv

    def make(**kwargs) -> gym.Env:
        try:
            return gym.make(env_id, max_episode_steps=cfg.max_episode_steps or None, **kwargs)
        except (gym.error.DependencyNotInstalled, ImportError) as exc:
            raise ConfigError(f"{env_id} needs a package that is not installed: {exc}") from None
    return GymVecEnv(make, cfg.num_envs, seed, normalize_obs=cfg.normalize_obs, obs_norm_steps=cfg.obs_norm_steps,
                     time_aware=cfg.time_aware, reward_clip="sign" if cfg.reward_clip else "none")


#: the MuJoCo tasks of the PFO paper (Moalla et al. 2024), at gymnasium's v5
PFO_MUJOCO = ("Ant-v5", "HalfCheetah-v5", "Humanoid-v5", "Hopper-v5")


def _mujoco_ids() -> list[str]:
    import gymnasium as gym
    return sorted(k for k, spec in gym.registry.items()
                  if isinstance(spec.entry_point, str) and spec.entry_point.startswith("gymnasium.envs.mujoco")
                  and spec.version == 5)


def _make_mujoco(cfg, env_id: str, seed: int):
    try:
        import imageio  # noqa: F401
        import mujoco  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"the mujoco suite needs the 'mujoco' extra ({exc}): pip install -e '.[mujoco]'") from None
    return _make_gym(cfg, env_id, seed)


register(Suite("gym", "any registered gymnasium environment (--env-module imports one that registers more)",
               "envs.gym_envs:GymEnvConfig", _gym_ids, _make_gym, default_agent="ppo",
               id_kind="gymnasium id", ids_name="registered ids", prepare=import_env_modules, family_configs="classic",
               plain=_plain_gym))
register(Suite("mujoco", "gymnasium's MuJoCo v5 tasks, with the PFO paper's settings", "envs.gym_envs:GymEnvConfig",
               _mujoco_ids, _make_mujoco, default_agent="ppo_pfo", id_kind="MuJoCo task", ids_name="tasks",
               prepare=import_env_modules, plain=_plain_gym))
def _minigrid_ids() -> list[str]:
    from envs.minigrid import minigrid_ids
    return minigrid_ids()


def _make_minigrid(cfg, env_id: str, seed: int):
    from envs.minigrid import make_minigrid
    return make_minigrid(cfg, env_id, seed)


register(Suite("minigrid", "MiniGrid and BabyAI (envpool where it has the id, else gymnasium's vector API)",
               "envs.minigrid:MiniGridConfig", _minigrid_ids, _make_minigrid, default_agent="ppo",
               id_kind="MiniGrid/BabyAI id", ids_name="registered ids", plain=_plain_minigrid, render_backend="gym"))
def _nethack_ids() -> list[str]:
    from envs.nethack import nethack_ids
    return nethack_ids()


def _make_nethack(cfg, env_id: str, seed: int):
    from envs.nethack import make_nethack
    return make_nethack(cfg, env_id, seed)


def _plain_nethack(env_id: str, num_envs: int):
    from envs.nethack import NetHackConfig
    return NetHackConfig(id=env_id, num_envs=num_envs, max_episode_steps=0, reward_clip=False)


register(Suite("nethack", "NetHack (NLE tasks, one worker process per game)", "envs.nethack:NetHackConfig",
               _nethack_ids, _make_nethack, default_agent="ppo", id_kind="NLE task", ids_name="tasks",
               plain=_plain_nethack))
register(Suite("supervised", "non-stationary supervised task streams", "envs.supervised:TaskStreamConfig",
               _streams, _make_stream, default_agent="online", id_kind="task stream", ids_name="streams",
               ignore_case=False, rl=False))


def _grid_ids() -> list[str]:
    from envs.gridworlds import ENV_IDS
    return list(ENV_IDS)


def _make_incontext(cfg, env_id: str, seed: int):
    from envs.incontext import InContextTasks
    cfg.id = env_id
    return InContextTasks(cfg, seed)


register(Suite("incontext", "offline sequence models on grid-world learning histories, evaluated in context",
               "envs.incontext:InContextConfig", _grid_ids, _make_incontext, default_agent="ra_dt",
               id_kind="grid world", ids_name="environments", rl=False, budget="updates"))


def _dataset_ids() -> list[str]:
    from envs.action_tasks import dataset_ids
    return dataset_ids()


def _canonical_datasets(value: str) -> str:
    from envs.action_tasks import canonical_datasets
    return canonical_datasets(value)


def _make_offline(cfg, env_id: str, seed: int):
    from envs.action_tasks import ActionTasks
    cfg.id = env_id
    return ActionTasks(cfg, seed)


register(Suite("offline", "multi-domain action models trained offline on demonstrations (Meta-World, Dark-Room)",
               "envs.action_tasks:ActionTasksConfig", _dataset_ids, _make_offline, default_agent="lram",
               id_kind="dataset combination", ids_name="combinations", alias=_canonical_datasets, rl=False,
               budget="updates"))


def _make_continual(cfg, env_id: str, seed: int):
    from envs.continual import ContinualTasks
    cfg.id = env_id
    return ContinualTasks(cfg, seed)


def _continual_ids() -> list[str]:
    from envs.continual import BENCHMARKS
    return list(BENCHMARKS)


register(Suite("continual", "continual offline fine-tuning of a pre-trained multi-task DT on Continual World's "
               "sequence (L2M)", "envs.continual:ContinualConfig", _continual_ids, _make_continual,
               default_agent="l2m", id_kind="benchmark", ids_name="benchmarks", rl=False, budget="updates"))
