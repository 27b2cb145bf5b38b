"""Build and list the grid worlds' learning-history datasets (one Minari dataset per task).

    python -m runners.datasets DarkRoom-10x10 --tasks train       # build what is missing (progress bar)
    python -m runners.datasets DarkKeyDoor-10x10 --tasks all --seed 1 --root /data/histories
    python -m runners.datasets metaworld --tasks reach-v3,push-v3   # Meta-World scripted demonstrations
    python -m runners.datasets metaworld --tasks cw10 --episodes 50
    python -m runners.datasets minatar --tasks Breakout,SpaceInvaders    # rollouts of PPO, trained on demand
    python -m runners.datasets minatar --tasks Breakout --runs results/minatar/Breakout__ppo__s1__...
    python -m runners.datasets --list                              # what exists, sizes, episodes, checksums

The root is ``--root``, else ``$PLASTICITY_DATASETS``, else ``results/datasets``. Existing
datasets are checked, never overwritten: one built with another seed or generator version,
or a damaged one, is an error (``error: ...`` on stderr, exit status 2).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from configs import ConfigError


def _format_list(root: Path) -> str:
    from envs.offline_data import list_datasets
    from runners.storage import format_bytes

    rows = list_datasets(root)
    if not rows:
        return f"no datasets under {root}"
    lines = [f"{'env':<18} {'task':<22} {'episodes':>8} {'steps':>9} {'seed':>4} {'size':>10}  checksum      status"]
    total = 0
    for r in rows:
        total += r.size_bytes
        size = format_bytes(r.size_bytes).split(" (")[0]
        lines.append(f"{r.env_id:<18} {r.task:<22} {r.episodes if r.episodes is not None else '-':>8} "
                     f"{r.steps if r.steps is not None else '-':>9} {r.seed if r.seed is not None else '-':>4} "
                     f"{size:>10}  {r.checksum[:12] or '-':<12}  {r.status}")
    lines.append(f"{len(rows)} datasets, {format_bytes(total)} under {root}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from envs.gridworlds import ENV_IDS
    from envs.offline_data import SPLITS, default_root

    parser = argparse.ArgumentParser(prog="python -m runners.datasets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("env_id", nargs="?", help=f"one of {', '.join(ENV_IDS)}, metaworld or minatar")
    parser.add_argument("--tasks", default=None, help=f"grid worlds: {', '.join(SPLITS)} (default train); "
                        "metaworld: comma-separated task names, or cw10 (default); minatar: comma-separated games "
                        "(default Breakout,SpaceInvaders)")
    parser.add_argument("--episodes", type=int, default=None, help="metaworld: episodes per task (default 100); "
                        "minatar: per game (default 50)")
    parser.add_argument("--runs", default=None, help="minatar: run directories of trained policies (runners.minatar "
                        "with --set env.full_action_space=true), comma-separated, one per game; games without one are "
                        "trained on demand")
    parser.add_argument("--agent", default=None, help="minatar: the agent trained on demand (default ppo)")
    parser.add_argument("--budget", type=int, default=None, help="minatar: its training steps (default 500000)")
    parser.add_argument("--max-steps", type=int, default=None, help="minatar: episodes are cut here (default 1000)")
    parser.add_argument("--noise", type=float, default=None, help="metaworld: action noise std (default 0.1)")
    parser.add_argument("--epsilon", type=float, default=None, help="metaworld: share of random episodes (0.1)")
    parser.add_argument("--root", type=Path, default=None, help="datasets folder (default $PLASTICITY_DATASETS "
                        "or results/datasets)")
    parser.add_argument("--seed", type=int, default=0, help="the learners' seed (default 0)")
    parser.add_argument("--list", action="store_true", help="list the datasets under the root and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    root = args.root or default_root()
    try:
        if args.list:
            print(_format_list(root))
            return 0
        if args.env_id is None:
            raise ConfigError(f"name an environment ({', '.join(ENV_IDS)}, metaworld, minatar) or pass --list")
        if args.env_id == "metaworld":
            return _metaworld(args, root)
        if args.env_id == "minatar":
            return _minatar(args, root)
        from envs.gridworlds import get_spec
        args.tasks = args.tasks or "train"
        from envs.offline_data import ensure_datasets
        spec = get_spec(args.env_id)
        if args.tasks not in SPLITS:
            raise ConfigError(f"unknown task split '{args.tasks}'; valid splits: {', '.join(SPLITS)}")
        start = time.perf_counter()
        built = ensure_datasets(root, spec.env_id, (args.tasks,), args.seed, progress=not args.no_progress)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    took = time.perf_counter() - start
    print(f"{spec.env_id} {args.tasks}: built {len(built)} datasets in {took:.1f} s under {root / spec.env_id}"
          + ("" if built else " (all were already there)"), file=sys.stderr)
    return 0


def _metaworld(args: argparse.Namespace, root: Path) -> int:
    from envs import trajectories
    from envs.metaworld import CW10
    defaults = trajectories.MetaWorldSettings()
    settings = trajectories.MetaWorldSettings(
        defaults.episodes if args.episodes is None else args.episodes,
        defaults.noise if args.noise is None else args.noise,
        defaults.epsilon if args.epsilon is None else args.epsilon)
    if settings.episodes < 1 or settings.noise < 0 or not 0 <= settings.epsilon <= 1:
        raise ConfigError(f"invalid settings {settings}: episodes >= 1, noise >= 0, 0 <= epsilon <= 1")
    wanted = args.tasks or "cw10"
    tasks = list(CW10) if wanted.lower() == "cw10" else [t.strip() for t in wanted.split(",") if t.strip()]
    start = time.perf_counter()
    built = trajectories.ensure(root, "metaworld", tasks, args.seed, settings, progress=not args.no_progress)
    print(f"metaworld: built {len(built)} datasets in {time.perf_counter() - start:.1f} s under {root / 'metaworld'}"
          + ("" if built else " (all were already there)"), file=sys.stderr)
    return 0


def _minatar(args: argparse.Namespace, root: Path) -> int:
    """MinAtar demonstrations; a given run fixes the agent and budget recorded for its game."""
    import dataclasses

    from envs import trajectories
    from runners.rundir import open_run
    defaults = trajectories.MinAtarSettings()
    settings = trajectories.MinAtarSettings(
        defaults.episodes if args.episodes is None else args.episodes, args.agent or defaults.agent,
        defaults.budget if args.budget is None else args.budget,
        defaults.max_steps if args.max_steps is None else args.max_steps)
    if settings.episodes < 1 or settings.budget < 1 or settings.max_steps < 1:
        raise ConfigError(f"invalid settings {settings}: episodes, budget and max-steps must be at least 1")
    tasks = trajectories.check_task_names("minatar", [t.strip() for t in (args.tasks or "Breakout,SpaceInvaders")
                                                 .split(",") if t.strip()])
    sources: dict[str, Path] = {}
    for path in [Path(p.strip()) for p in (args.runs or "").split(",") if p.strip()]:
        run = open_run(path, suite="minatar", checkpoint="latest.pt")
        game = run.sections["env"].id
        if game not in tasks:
            raise ConfigError(f"{path} is a {game} run, not one of --tasks {','.join(tasks)}")
        sources[game] = path
    start, built = time.perf_counter(), []
    for task in tasks:  # each game with its own settings: a given run's agent and budget
        run_settings = settings
        if task in sources:
            run = open_run(sources[task])
            run_settings = dataclasses.replace(settings, agent=run.spec.name, budget=run.sections["run"].total_steps)
        built += trajectories.ensure(root, "minatar", [task], args.seed, run_settings, not args.no_progress,
                                     sources)
    print(f"minatar: built {len(built)} datasets in {time.perf_counter() - start:.1f} s under {root / 'minatar'}"
          + ("" if built else " (all were already there)"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
