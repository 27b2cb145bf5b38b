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
DOMAINS = ("metaworld",)


@dataclass(frozen=True)
class MetaWorldSettings:
    """How Meta-World demonstrations are generated (the suite's choices; envs/metaworld.py says why)."""
    episodes: int = 100  # per task: 20,000 steps
    noise: float = 0.1  # std of the Gaussian noise on the expert's actions (actions lie in [-1, 1])
    epsilon: float = 0.1  # share of episodes played with uniform random actions

    GENERATOR = "metaworld-scripted"
    VERSION = 1


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


def _check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ConfigError(f"unknown demonstration domain '{domain}'; valid domains: {', '.join(DOMAINS)}")
    return domain


def _expected(domain: str, settings: MetaWorldSettings, seed: int) -> dict[str, Any]:
    return {"format": FORMAT, "domain": domain, "generator": settings.GENERATOR,
            "generator_version": settings.VERSION, "seed": seed,
            "settings": {"episodes": settings.episodes, "noise": settings.noise, "epsilon": settings.epsilon}}


def verify(root: Path, domain: str, task: str, seed: int, settings: MetaWorldSettings) -> dict[str, Any]:
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


def build(root: Path, domain: str, task: str, seed: int, settings: MetaWorldSettings,
          progress: Any = None) -> Path:
    """Generate and store one task's demonstrations (atomically; never overwrites)."""
    import gymnasium as gym

    from envs.metaworld import ACT_DIM, HORIZON, OBS_DIM, demonstrations
    _check_domain(domain)
    root = Path(root).absolute()  # Minari resolves a relative MINARI_DATASETS_PATH against its own default
    episodes = demonstrations(task, settings.episodes, seed, settings.noise, settings.epsilon, progress)
    buffers = [{"observations": e.observations, "actions": e.actions, "rewards": e.rewards,
                "terminations": np.zeros(HORIZON, bool), "truncations": np.arange(HORIZON) == HORIZON - 1}
               for e in episodes]
    returns = np.array([e.rewards.sum() for e in episodes])
    manifest = {**_expected(domain, settings, seed), "task": task, "episodes": len(episodes),
                "steps": len(episodes) * HORIZON, "success_final": float(np.mean([e.success[-1] for e in episodes])),
                "success_any": float(np.mean([e.success.any() for e in episodes])),
                "mean_return": float(returns.mean()), "max_return": float(returns.max())}
    spaces = {"observation_space": gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
              "action_space": gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)}
    return publish_dataset(
        dataset_dir(root, domain, task),
        lambda tmp: minari_write(tmp, f"{domain}-{task}-v{settings.VERSION}", buffers,
                                 f"{settings.GENERATOR} demonstrations of {task}", f"{settings.GENERATOR} "
                                 f"v{settings.VERSION}", "envs/metaworld.py", **spaces),
        manifest, MANIFEST)


def ensure(root: Path, domain: str, tasks: list[str], seed: int, settings: MetaWorldSettings,
           progress: bool = True) -> list[Path]:
    """Build the missing datasets of ``tasks`` after checking the existing ones; returns those built."""
    from envs.metaworld import HORIZON, check_tasks
    _check_domain(domain)
    tasks = check_tasks(tasks)
    missing = []
    for task in tasks:
        if dataset_dir(root, domain, task).exists():
            verify(root, domain, task, seed, settings)
        else:
            missing.append(task)
    remove_stale_folders(Path(root) / domain)
    if not missing:
        return []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(missing) * settings.episodes * HORIZON, desc=f"{domain} demonstrations", unit="step",
                   file=sys.stderr)
    try:
        built = []
        for task in missing:
            try:
                built.append(build(root, domain, task, seed, settings, bar))
            except ConfigError:
                if not dataset_dir(root, domain, task).exists():
                    raise
                verify(root, domain, task, seed, settings)  # another process built it meanwhile: it must match
        return built
    finally:
        if bar is not None:
            bar.close()


def load(root: Path, domain: str, task: str, seed: int, settings: MetaWorldSettings) -> Trajectories:
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
                        actions=np.concatenate([ep.actions for ep in episodes]).astype(np.float32),
                        rewards=np.concatenate([ep.rewards for ep in episodes]).astype(np.float32),
                        episode=np.repeat(np.arange(len(episodes)), lengths), meta=manifest)
