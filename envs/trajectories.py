"""Demonstration datasets of the action models (LRAM, L2M): one Minari dataset per (domain, task), built here.

Layout under the datasets root (as :mod:`envs.offline_data`'s learning histories, same atomic writes and
checks)::

    <root>/metaworld/<task>/      e.g. results/datasets/metaworld/reach-v3/
        data/                     Minari 0.5: one group per episode (observations (T+1, D), actions, rewards,
                                  terminations, truncations)
        trajectories.json         manifest: domain, task, generator and version, settings, seed, counts,
                                  success rate and mean return, checksum of data/

Domains and their generators:

* ``metaworld``: the scripted expert policies of Meta-World with Gaussian action noise and epsilon-random
  episodes (:func:`envs.metaworld.demonstrations`); 200-step episodes, continuous 4-dimensional actions.
* ``minatar``: rollouts of a policy the suite trained on that game (``runners.evaluate.record_episodes``),
  actions drawn from the policy (its own exploration gives the data diversity, as LRAM's Atari data are a DQN's
  replay); observations flattened to C x 10 x 10 uint8, MinAtar's full action set (6 actions: one vocabulary
  for every game, as LRAM's 18 Atari actions), episodes cut at ``max_steps``. The policy comes from a run
  directory given by the user (``python -m runners.datasets minatar --runs DIR,...``: a ``runners.minatar``
  run with ``env.full_action_space=true``) or is trained on demand: ``python -m runners.minatar --agent=ppo
  --total-steps=<budget> --set env.full_action_space=true`` under ``<root>/minatar/.agents/`` (about 1.5
  minutes per game at 500k steps on 2 cores), reused while it exists. The manifest records the source run,
  its agent and budget.

A dataset built by another generator version, seed or settings is refused with a one-line error naming
the fix; an existing dataset is never overwritten.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from configs import ConfigError
from envs.offline_data import DEMONSTRATIONS_MANIFEST as MANIFEST
from envs.offline_data import (
    checksum,
    minari_episodes,
    minari_write,
    publish_dataset,
    read_manifest,
    remove_stale_folders,
)

FORMAT = 1
DOMAINS = ("metaworld", "minatar")


@dataclass(frozen=True)
class MetaWorldSettings:
    """How Meta-World demonstrations are generated (the suite's choices; envs/metaworld.py says why)."""
    episodes: int = 100  # per task: 20,000 steps
    noise: float = 0.1  # std of the Gaussian noise on the expert's actions (actions lie in [-1, 1])
    epsilon: float = 0.1  # share of episodes played with uniform random actions

    GENERATOR = "metaworld-scripted"
    VERSION = 1


@dataclass(frozen=True)
class MinAtarSettings:
    """How MinAtar demonstrations are generated (the suite's choices; the module docstring says why)."""
    episodes: int = 50  # per game
    agent: str = "ppo"  # the suite's agent whose policy is rolled out
    budget: int = 500_000  # its training steps (configs/minatar.yaml's default budget)
    max_steps: int = 1000  # episodes are cut here (MinAtar has no time limit)

    GENERATOR = "agent-rollouts"
    VERSION = 1


Settings = MetaWorldSettings | MinAtarSettings
SETTINGS = {"metaworld": MetaWorldSettings, "minatar": MinAtarSettings}


@dataclass
class Trajectories:
    """One task's episodes, flattened: observations (N, D) float32, actions (N, A) float32 (continuous) or
    (N,) int64 (discrete), rewards (N,), episode (N,) index of each step's episode, in order."""
    domain: str
    task: str
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    episode: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_episodes(self) -> int:
        return int(self.episode[-1]) + 1 if len(self.episode) else 0

    def episode_returns(self) -> np.ndarray:
        return np.bincount(self.episode, weights=self.rewards, minlength=self.num_episodes)


def dataset_dir(root: Path, domain: str, task: str) -> Path:
    return Path(root) / domain / task


def build_command(domain: str, tasks: list[str], root: Path) -> str:
    return f"python -m runners.datasets {domain} --tasks {','.join(tasks)} --root {root}"


def _check_domain(domain: str, settings: Settings) -> str:
    if domain not in DOMAINS:
        raise ConfigError(f"unknown demonstration domain '{domain}'; valid domains: {', '.join(DOMAINS)}")
    if not isinstance(settings, SETTINGS[domain]):
        raise TypeError(f"{domain} datasets take {SETTINGS[domain].__name__}, not {type(settings).__name__}")
    return domain


def check_task_names(domain: str, tasks: list[str]) -> list[str]:
    """The domain's task names, checked (one-line ConfigError naming the valid ones)."""
    if domain == "metaworld":
        from envs.metaworld import check_tasks as check_metaworld
        return check_metaworld(tasks)
    from envs.gym_envs import MINATAR_GAMES
    bad = [t for t in tasks if t not in MINATAR_GAMES]
    if bad:
        raise ConfigError(f"unknown MinAtar game '{bad[0]}'; valid games: {', '.join(MINATAR_GAMES)}")
    return list(tasks)


def _expected(domain: str, settings: Settings, seed: int) -> dict[str, Any]:
    from dataclasses import asdict
    return {"format": FORMAT, "domain": domain, "generator": settings.GENERATOR,
            "generator_version": settings.VERSION, "seed": seed, "settings": asdict(settings)}


def verify(root: Path, domain: str, task: str, seed: int, settings: Settings) -> dict[str, Any]:
    """Check one dataset without loading it: the manifest matches what would be built, the checksum holds."""
    path = dataset_dir(root, domain, task)
    if not path.is_dir():
        raise ConfigError(f"no {domain} dataset for task {task} under {root}; build it with: "
                          f"{build_command(domain, [task], root)}")
    manifest = read_manifest(path, MANIFEST)
    for key, want in {**_expected(domain, settings, seed), "task": task}.items():
        if manifest.get(key) != want:
            raise ConfigError(f"{path} was built with {key}={manifest.get(key)!r}, not {want!r}; "
                              "use the same settings or another --root")
    if not (path / "data").is_dir() or checksum(path / "data") != manifest.get("checksum"):
        raise ConfigError(f"{path} is corrupt or truncated (checksum mismatch); delete it and rebuild")
    return manifest


def _metaworld_episodes(task: str, seed: int, settings: MetaWorldSettings, progress: Any
                        ) -> tuple[list[dict[str, np.ndarray]], dict[str, Any], dict[str, Any]]:
    import gymnasium as gym

    from envs.metaworld import ACT_DIM, HORIZON, OBS_DIM, demonstrations
    episodes = demonstrations(task, settings.episodes, seed, settings.noise, settings.epsilon, progress)
    buffers = [{"observations": e.observations, "actions": e.actions, "rewards": e.rewards,
                "terminations": np.zeros(HORIZON, bool), "truncations": np.arange(HORIZON) == HORIZON - 1}
               for e in episodes]
    facts = {"success_final": float(np.mean([e.success[-1] for e in episodes])),
             "success_any": float(np.mean([e.success.any() for e in episodes]))}
    spaces = {"observation_space": gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
              "action_space": gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)}
    return buffers, facts, spaces


def minatar_source(root: Path, game: str, settings: MinAtarSettings, seed: int, progress: bool) -> Path:
    """The run directory of the policy MinAtar demonstrations of ``game`` come from when none is given: trained
    here on demand (``runners.minatar``, the full action set), resumed if it was cut short, reused once done."""
    from runners.rundir import train_or_reuse
    run_dir = Path(root).absolute() / "minatar" / ".agents" / f"{game}-{settings.agent}-{settings.budget}-s{seed}"
    if not (run_dir / "summary.json").exists():
        print(f"training the {settings.agent} policy of the MinAtar {game} demonstrations ({settings.budget} steps) "
              f"in {run_dir}", file=sys.stderr)
    code = train_or_reuse("minatar", run_dir, [f"--agent={settings.agent}", f"--env={game}",
                                               f"--total-steps={settings.budget}", f"--seed={seed}",
                                               "--set", "env.full_action_space=true"],
                          [] if progress else ["--no-progress"], "MinAtar source policy")
    if isinstance(code, int):
        raise ConfigError(f"training the MinAtar {game} source policy failed (exit {code}); see {run_dir}")
    return run_dir


def _minatar_episodes(root: Path, task: str, seed: int, settings: MinAtarSettings, progress: bool,
                      source: Path | None) -> tuple[list[dict[str, np.ndarray]], dict[str, Any], dict[str, Any]]:
    import gymnasium as gym

    from runners.evaluate import record_episodes
    run_dir = Path(source) if source is not None else minatar_source(root, task, settings, seed, progress)
    episodes, run = record_episodes(run_dir, settings.episodes, seed, {"max_episode_frames": settings.max_steps},
                                    progress=progress)
    env, total = run.sections["env"], run.sections["run"].total_steps
    wrong = {"suite": (run.suite, "minatar"), "game": (env.id, task), "agent": (run.spec.name, settings.agent),
             "budget": (total, settings.budget), "full_action_space": (env.full_action_space, True)}
    for key, (have, want) in wrong.items():
        if have != want:
            raise ConfigError(f"the source run {run_dir} has {key}={have!r}, these demonstrations need {want!r}"
                              + ("; train it with --set env.full_action_space=true" if key == "full_action_space"
                                 else ""))
    buffers = []
    for e in episodes:
        n = len(e["actions"])
        buffers.append({"observations": e["observations"].reshape(n + 1, -1).astype(np.uint8),
                        "actions": e["actions"].astype(np.int64), "rewards": e["rewards"],
                        "terminations": np.arange(n) == n - 1 if n < settings.max_steps else np.zeros(n, bool),
                        "truncations": np.arange(n) == n - 1 if n == settings.max_steps else np.zeros(n, bool)})
    width = buffers[0]["observations"].shape[1]
    facts = {"source_run": str(run_dir), "source_agent": run.spec.name, "source_budget": int(total),
             "mean_length": float(np.mean([len(b["actions"]) for b in buffers]))}
    spaces = {"observation_space": gym.spaces.Box(0, 1, (width,), np.uint8), "action_space": gym.spaces.Discrete(6)}
    return buffers, facts, spaces


def build(root: Path, domain: str, task: str, seed: int, settings: Settings, progress: Any = None,
          source: Path | None = None) -> Path:
    """Generate and store one task's demonstrations (atomically; never overwrites). ``progress``: a tqdm bar
    (Meta-World) or whether to show progress (MinAtar); ``source``: MinAtar's run directory (else trained)."""
    _check_domain(domain, settings)
    root = Path(root).absolute()  # Minari resolves a relative MINARI_DATASETS_PATH against its own default
    if isinstance(settings, MetaWorldSettings):
        buffers, facts, spaces = _metaworld_episodes(task, seed, settings, progress)
    else:
        buffers, facts, spaces = _minatar_episodes(root, task, seed, settings, bool(progress), source)
    returns = np.array([b["rewards"].sum() for b in buffers])
    manifest = {**_expected(domain, settings, seed), "task": task, "episodes": len(buffers),
                "steps": int(sum(len(b["actions"]) for b in buffers)), **facts,
                "mean_return": float(returns.mean()), "max_return": float(returns.max())}
    return publish_dataset(
        dataset_dir(root, domain, task),
        lambda tmp: minari_write(tmp, f"{domain}-{task.lower()}-v{settings.VERSION}", buffers,
                                 f"{settings.GENERATOR} demonstrations of {task}", f"{settings.GENERATOR} "
                                 f"v{settings.VERSION}", "envs/trajectories.py", **spaces),
        manifest, MANIFEST)


def ensure(root: Path, domain: str, tasks: list[str], seed: int, settings: Settings, progress: bool = True,
           sources: dict[str, Path] | None = None) -> list[Path]:
    """Build the missing datasets of ``tasks`` after checking the existing ones; returns those built.
    ``sources``: MinAtar's source run directory per game (the others are trained on demand)."""
    _check_domain(domain, settings)
    tasks = check_task_names(domain, tasks)
    missing = []
    for task in tasks:
        if dataset_dir(root, domain, task).exists():
            verify(root, domain, task, seed, settings)
        else:
            missing.append(task)
    remove_stale_folders(Path(root) / domain)
    if not missing:
        return []
    bar: Any = progress  # MinAtar: whether to show the training's and the rollouts' own progress
    if isinstance(settings, MetaWorldSettings):
        bar = None
    if progress and isinstance(settings, MetaWorldSettings):
        from tqdm import tqdm

        from envs.metaworld import HORIZON
        bar = tqdm(total=len(missing) * settings.episodes * HORIZON, desc=f"{domain} demonstrations", unit="step",
                   file=sys.stderr)
    try:
        built = []
        for task in missing:
            try:
                built.append(build(root, domain, task, seed, settings, bar, (sources or {}).get(task)))
            except ConfigError:
                if not dataset_dir(root, domain, task).exists():
                    raise
                verify(root, domain, task, seed, settings)  # another process built it meanwhile: it must match
        return built
    finally:
        if hasattr(bar, "close"):
            bar.close()


def load(root: Path, domain: str, task: str, seed: int, settings: Settings) -> Trajectories:
    """One task's demonstrations, checked; ConfigError (one line) if missing, corrupt or foreign."""
    manifest = verify(root, domain, task, seed, settings)
    path = dataset_dir(root, domain, task)
    try:
        episodes = minari_episodes(path / "data")
    except Exception as exc:  # h5py and Minari raise many types on a damaged file
        raise ConfigError(f"{path} is unreadable ({type(exc).__name__}: {str(exc)[:80]}); delete it and rebuild") \
            from None
    lengths = [len(ep.actions) for ep in episodes]
    if len(episodes) != manifest.get("episodes") or sum(lengths) != manifest.get("steps"):
        raise ConfigError(f"{path} holds {len(episodes)} episodes / {sum(lengths)} steps, its manifest says "
                          f"{manifest.get('episodes')} / {manifest.get('steps')}; delete it and rebuild")
    return Trajectories(domain, task,
                        observations=np.concatenate([ep.observations[:-1] for ep in episodes]).astype(np.float32),
                        actions=np.concatenate([ep.actions for ep in episodes]).astype(
                            np.int64 if domain == "minatar" else np.float32),
                        rewards=np.concatenate([ep.rewards for ep in episodes]).astype(np.float32),
                        episode=np.repeat(np.arange(len(episodes)), lengths), meta=manifest)
