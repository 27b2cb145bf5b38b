"""``python -m runners.evaluate RUN_DIR [--checkpoint NAME] [--episodes 10] [--stochastic | --random] [--video]``:
roll out a saved policy.

The run's own config rebuilds its agent and environments (the training protocol: Atari's frame skip, sticky
actions and no-ops; the observation normalisation statistics of the run), on environments seeded apart from
training's (``--seed``). Episodes are real ones (game overs, not lost lives). Each of the ``num_envs``
environments plays its share of the episodes, in order, so that short episodes are not over-represented (taking
the first N to finish would be). Actions are the policy's most likely ones, or drawn from it with
``--stochastic`` (:meth:`agents.base.Agent.policy_actions`). ``--random`` plays uniformly random actions instead,
under the same protocol, seeds and episode shares: the baseline to compare a trained policy with.

Prints the mean and the interquartile mean (IQM) of the returns with 95% percentile-bootstrap intervals over
episodes, and appends the evaluation to ``RUN_DIR/eval.json`` (written atomically; earlier entries are kept).
Any error in what was asked is one line and exit status 2, with nothing written.

``--video`` writes one MP4 per evaluated episode under ``RUN_DIR/videos/<checkpoint>-<actions>-s<seed>/``
(``episode_000.mp4`` ... in the order of eval.json's ``returns``; a folder that exists gets a new suffix, so no
video is overwritten), streamed frame by frame with imageio's ffmpeg writer (the ``video`` extra). Frames are
the environments' own colour renderings, not what the agent sees: Atari's RGB screen, gymnasium's ``rgb_array``
(MuJoCo through EGL unless ``MUJOCO_GL`` says otherwise, MiniGrid's tiles), MinAtar's palette; small frames are
enlarged with whole pixels. envpool keeps no colour frames, so an envpool run is evaluated on its suite's
``render_backend`` (``envs/suites.py``): Atari's ale-py, whose preprocessing is envpool's (envs/atari.py);
MiniGrid's gymnasium package, whose episodes differ from envpool's re-implementation for the same seed. The
dashboard links each run's videos.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from configs import ConfigError
from envs import get_suite

EVAL_SEED_OFFSET = 1_000_000  # evaluation environments are seeded apart from training's (env_seed(run.seed) + i)


class EpisodeVideos:
    """One MP4 per environment's current episode, streamed as it is played; kept if the episode counts."""

    MIN_SIDE = 160  # frames smaller than this (MinAtar's 10 x 10) are enlarged by a whole factor

    def __init__(self, envs, folder: Path):
        try:
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise ConfigError("--video needs imageio and its ffmpeg: pip install -e '.[video]'") from None
        self._imageio, self.envs, self.folder = imageio, envs, folder
        self._writers: list[Any] = [None] * envs.num_envs
        self.kept: list[Path] = []

    def _temp(self, i: int) -> Path:
        return self.folder / f".recording_env{i}.mp4"

    @classmethod
    def prepare(cls, frame: np.ndarray) -> np.ndarray:
        """uint8 RGB with even sides (libx264's need), small frames enlarged with whole pixels."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8:  # float colours in [0, 1] (MinAtar's palette) or [0, 255]
            scale = 255.0 if frame.max() <= 1.0 else 1.0
            frame = np.clip(frame * scale, 0, 255).astype(np.uint8)
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=2)
        k = max(1, -(-cls.MIN_SIDE // max(frame.shape[:2])))
        if k > 1:
            frame = frame.repeat(k, axis=0).repeat(k, axis=1)
        h, w = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
        return np.ascontiguousarray(frame[:h, :w, :3])

    def frame(self) -> None:
        """Append every environment's current frame to its episode's video."""
        for i, image in enumerate(self.envs.render()):
            if self._writers[i] is None:
                self._writers[i] = self._imageio.get_writer(self._temp(i), format="FFMPEG", mode="I",
                                                            fps=self.envs.render_fps, codec="libx264",
                                                            macro_block_size=1, ffmpeg_log_level="error")
            self._writers[i].append_data(self.prepare(image))

    def end(self, i: int, keep: bool) -> None:
        """Environment ``i``'s episode ended: its video becomes the next ``episode_NNN.mp4`` or is dropped."""
        writer, self._writers[i] = self._writers[i], None
        if writer is None:
            return
        writer.close()
        if keep:
            path = self.folder / f"episode_{len(self.kept):03d}.mp4"
            self._temp(i).replace(path)
            self.kept.append(path)
        else:
            self._temp(i).unlink(missing_ok=True)

    def close(self) -> None:
        for i in range(len(self._writers)):
            self.end(i, keep=False)


class RandomPolicy:
    """Uniformly random actions for :func:`rollout` (``--random``): a Discrete space's actions, or a Box's drawn
    uniformly between its bounds, from the rollout's generator."""

    def __init__(self, envs: Any):
        self.envs = envs

    def policy_actions(self, obs: np.ndarray, deterministic: bool, generator: Any) -> np.ndarray:
        import gymnasium as gym
        import torch
        space = self.envs.single_action_space
        if isinstance(space, gym.spaces.Box):
            u = torch.rand((len(obs), *space.shape), generator=generator, dtype=torch.float64).numpy()
            return (space.low + u * (space.high - space.low)).astype(np.float32)
        return torch.randint(int(space.n), (len(obs),), generator=generator).numpy()


def video_folder(run_dir: Path, checkpoint: str, actions: str, seed: int) -> Path:
    """A new folder for this evaluation's videos (a suffix when one of that name exists)."""
    base = f"{Path(checkpoint).stem}-{actions}-s{seed}"
    folder, n = run_dir / "videos" / base, 1
    while folder.exists():
        n += 1
        folder = run_dir / "videos" / f"{base}-{n}"
    return folder


class TransitionRecorder:
    """Every environment's current episode as (observation, action, reward) steps, kept if the episode counts:
    the demonstrations of a trained policy (``envs.trajectories``' MinAtar datasets). The reset transitions of
    next-step autoreset are left out; each kept episode has its last observation too."""

    def __init__(self, num_envs: int):
        self._steps: list[list[tuple[np.ndarray, Any, float]]] = [[] for _ in range(num_envs)]
        self._last: list[np.ndarray | None] = [None] * num_envs
        self._resetting = np.zeros(num_envs, bool)
        #: the counted episodes, in the order they ended: observations (T+1, ...), actions (T,), rewards (T,)
        self.kept: list[dict[str, np.ndarray]] = []

    def step(self, obs: np.ndarray, actions: np.ndarray, step: Any) -> None:
        ended = np.asarray(step.terminated) | np.asarray(step.truncated)
        for i in range(len(self._steps)):
            if self._resetting[i]:  # this step only reset the environment: its action was ignored
                self._resetting[i] = False
                continue
            self._steps[i].append((obs[i], actions[i], float(step.reward[i])))
            if ended[i]:
                self._last[i], self._resetting[i] = step.obs[i], True

    def end(self, i: int, keep: bool) -> None:
        steps, last = self._steps[i], self._last[i]
        self._steps[i], self._last[i] = [], None
        if keep and steps and last is not None:
            self.kept.append({"observations": np.stack([s[0] for s in steps] + [last]),
                              "actions": np.array([s[1] for s in steps]),
                              "rewards": np.array([s[2] for s in steps], np.float32)})


def rollout(agent, episodes: int, deterministic: bool, seed: int, progress: bool = False,
            videos: EpisodeVideos | None = None, transitions: TransitionRecorder | None = None
            ) -> list[dict[str, Any]]:
    """``episodes`` episodes of ``agent``'s policy on ``agent.envs`` (reset here): each environment plays
    its share in order. Returns (return, length, environment) per episode, in the order they ended; with
    ``videos``, every counted episode's frames go to its MP4; with ``transitions``, its steps to the recorder."""
    import torch
    envs = agent.envs
    n = envs.num_envs
    quota = np.full(n, episodes // n) + (np.arange(n) < episodes % n)
    played = np.zeros(n, np.int64)
    generator = torch.Generator().manual_seed(seed)
    out: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=episodes, desc="evaluate", unit="episode", file=sys.stderr)
    obs = envs.reset()
    if videos is not None:
        videos.frame()
    while len(out) < episodes:
        actions = agent.policy_actions(obs, deterministic, generator)
        step = envs.step(actions)
        if videos is not None:
            videos.frame()
        if transitions is not None:
            transitions.step(obs, actions, step)
        for ep in step.episodes:
            counted = bool(played[ep.env_index] < quota[ep.env_index])
            if videos is not None:
                videos.end(ep.env_index, keep=counted)
            if transitions is not None:
                transitions.end(ep.env_index, keep=counted)
            if counted:
                played[ep.env_index] += 1
                out.append({"return": ep.ret, "length": ep.length, "env": ep.env_index})
                if bar is not None:
                    bar.update(1)
        obs = step.obs
    if bar is not None:
        bar.close()
    return out


def summarise(returns: np.ndarray) -> dict[str, float]:
    """Mean and IQM of the episode returns with 95% percentile-bootstrap intervals (runners.aggregate)."""
    from runners.aggregate import bootstrap_ci, iqm, mean
    lo, hi = bootstrap_ci(returns, mean)
    ilo, ihi = bootstrap_ci(returns, iqm)
    return {"mean": float(returns.mean()), "mean_lo": lo, "mean_hi": hi, "iqm": iqm(returns), "iqm_lo": ilo,
            "iqm_hi": ihi, "median": float(np.median(returns)), "min": float(returns.min()),
            "max": float(returns.max())}


def read_evaluations(path: Path) -> list[dict[str, Any]]:
    """The evaluations already in ``eval.json`` (none when it does not exist), or ConfigError when unreadable."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        entries = data["evaluations"]
        assert isinstance(entries, list)
        return entries
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise ConfigError(f"{path} exists but is not an evaluation record ({exc}); move it away to evaluate here, "
                          "so that nothing in it is lost") from None


def restore_policy(run: Any, ckpt: dict[str, Any], envs: Any, device: Any) -> Any:
    """The agent of ``run`` (a :class:`runners.rundir.Run`) on ``envs`` with the checkpoint's weights and
    observation preprocessing, its networks in eval mode."""
    agent = run.make_agent(envs, device, run.sections["run"].seed)
    agent.load_state_dict(ckpt["agent"])
    for net in agent.networks().values():
        net.eval()
    agent.envs.adopt_preprocessing(ckpt["envs"])
    return agent


def record_episodes(run_dir: Path, episodes: int, seed: int, env_changes: dict[str, Any], num_envs: int = 8,
                    progress: bool = False) -> tuple[list[dict[str, np.ndarray]], Any]:
    """``episodes`` episodes of the policy in ``run_dir``'s latest checkpoint, actions drawn from it, on fresh
    environments of its own config with ``env_changes`` (e.g. a time limit) and ``num_envs`` environments, seeded
    apart from training's: (the episodes' steps as :attr:`TransitionRecorder.kept`, the :class:`Run`)."""
    import dataclasses

    import torch

    from envs import make_vec_env
    from runners.rundir import open_run
    from runners.train import env_seed
    run = open_run(run_dir, checkpoint="latest.pt")
    ckpt = run.load_checkpoint(run.ckpt_dir / "latest.pt")
    env_cfg = dataclasses.replace(run.sections["env"], num_envs=num_envs, **env_changes)
    envs = make_vec_env(run.suite, env_cfg, env_seed(run.sections["run"].seed) + EVAL_SEED_OFFSET + seed)
    try:
        agent = restore_policy(run, ckpt, envs, torch.device("cpu"))
        recorder = TransitionRecorder(envs.num_envs)
        rollout(agent, episodes, False, seed, progress, transitions=recorder)
    finally:
        envs.close()
    return recorder.kept, run


def evaluate(run_dir: Path, checkpoint: str, episodes: int, deterministic: bool, seed: int, device: str,
             progress: bool, video: bool = False, random: bool = False) -> dict[str, Any]:
    """Play ``episodes`` episodes of the run's policy at ``checkpoint`` (with ``random``: of uniformly random actions
    on the same environments, no checkpoint read) and append the record to ``RUN_DIR/eval.json``."""
    import torch

    from envs import make_vec_env
    from runners.rundir import open_run
    from runners.storage import atomic_write_json, make_dir
    from runners.train import env_seed, resolve_device
    run = open_run(run_dir, checkpoint=None if random else checkpoint)
    ckpt = None if random else run.load_checkpoint(run.ckpt_dir / checkpoint)
    actions = "random" if random else "deterministic" if deterministic else "stochastic"
    record = run_dir / "eval.json"
    earlier = read_evaluations(record)  # refuse before any work when it cannot be extended
    sections = run.sections
    torch.set_num_threads(sections["run"].torch_threads or torch.get_num_threads())
    recorder: EpisodeVideos | None = None
    if video:
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo rendering (before mujoco is imported)
        render_backend = get_suite(run.suite).render_backend
        if render_backend and getattr(sections["env"], "backend", render_backend) != render_backend:
            sections["env"].backend = render_backend  # envpool keeps no colour frames: the suite's other back end
    envs = make_vec_env(run.suite, sections["env"], env_seed(sections["run"].seed) + EVAL_SEED_OFFSET + seed)
    try:
        agent = RandomPolicy(envs) if ckpt is None else restore_policy(run, ckpt, envs, resolve_device(device))
        if video:
            envs.enable_rendering()
            recorder = EpisodeVideos(envs, video_folder(run_dir, "none" if random else checkpoint, actions, seed))
            make_dir(recorder.folder)
        t0 = time.perf_counter()
        played = rollout(agent, episodes, deterministic, seed, progress, recorder)
        seconds = time.perf_counter() - t0
        if recorder is not None:
            recorder.close()  # the episodes still running when the last counted one ended are dropped
    except BaseException:
        if recorder is not None:
            recorder.close()
            shutil.rmtree(recorder.folder, ignore_errors=True)  # no half evaluation's videos
        raise
    finally:
        envs.close()
    returns = np.array([e["return"] for e in played])
    entry = {"checkpoint": None if ckpt is None else checkpoint,
             "env_steps": 0 if ckpt is None else int(ckpt["agent"]["env_steps"]), "episodes": episodes,
             "actions": actions, "seed": seed, "env": sections["env"].id, "agent": run.spec.name,
             **summarise(returns),
             "mean_length": float(np.mean([e["length"] for e in played])), "seconds": round(seconds, 2),
             "returns": returns.tolist(), "lengths": [e["length"] for e in played],
             "videos": [str(p.relative_to(run_dir)) for p in recorder.kept] if recorder is not None else [],
             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(record, {"evaluations": [*earlier, entry]})
    return entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runners.evaluate", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory (results/<suite>/<run>)")
    parser.add_argument("--checkpoint", default="latest.pt", metavar="NAME",
                        help="a file of RUN_DIR/checkpoints/ (default latest.pt), e.g. step_000000004096.pt")
    parser.add_argument("--episodes", type=int, default=10, help="episodes to play (default 10)")
    parser.add_argument("--stochastic", action="store_true", help="draw actions from the policy (default: its "
                        "most likely action; epsilon-greedy agents use their final epsilon)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (environments and sampling)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--random", action="store_true", help="uniformly random actions on the run's environments "
                        "instead of its policy (no checkpoint is read): the baseline under the same protocol")
    parser.add_argument("--video", action="store_true", help="an MP4 per episode under RUN_DIR/videos/ (the video "
                        "extra)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.episodes < 1:
            raise ConfigError(f"--episodes must be at least 1, got {args.episodes}")
        if args.random and args.stochastic:
            raise ConfigError("--random and --stochastic exclude each other (random actions are not the policy's)")
        entry = evaluate(args.run_dir, args.checkpoint, args.episodes, not args.stochastic, args.seed, args.device,
                         progress=not args.no_progress and sys.stderr.isatty(), video=args.video, random=args.random)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    what = "uniformly random actions" if args.random else f"{args.checkpoint} ({entry['env_steps']} steps)"
    print(f"{args.run_dir} {what}, {entry['episodes']} {entry['actions']} "
          f"episodes of {entry['env']}: mean {entry['mean']:.2f} [{entry['mean_lo']:.2f}, {entry['mean_hi']:.2f}], "
          f"IQM {entry['iqm']:.2f} [{entry['iqm_lo']:.2f}, {entry['iqm_hi']:.2f}] (95% bootstrap over episodes); "
          f"written to {args.run_dir / 'eval.json'}"
          + (f"; {len(entry['videos'])} videos in {args.run_dir / Path(entry['videos'][0]).parent}"
             if entry["videos"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
