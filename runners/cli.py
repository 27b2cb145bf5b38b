"""Command line shared by the suite runners (``python -m runners.atari``, ``.minatar``, ``.classic``, ``.gym``, ...).

Configuration layers, later wins:

1. ``configs/<suite>.yaml``: run, env and diagnostics defaults of the suite;
2. ``configs/<family>.yaml``: the agent's hyperparameters as in its paper (Atari);
3. ``configs/<suite>/<family>.yaml``: the suite's overrides of those (if any);
4. ``configs/<variant>.yaml``: a research variant's few changes (``ppo_pfo``);
5. ``--config FILE`` (repeatable): your own YAML with the same sections;
6. shortcuts (``--env``, ``--seed``, ``--total-steps``, ``--device``, ...), then
   ``--set section.field=value`` or, equivalently, ``--section.field=value``; a field of the
   agent's own section needs no section (``--similarity-from RUN_DIR``: ``rainbow.similarity_from``).

What differs between suites (the env section, ids, default agent) comes from their records in
:mod:`envs.suites`; config layers and the run-directory loader are in :mod:`runners.rundir`.

Any error in what was asked (unknown agent, game or field, invalid value, a ``--resume``
path that is not a run directory, a corrupt checkpoint, a missing optional package)
prints one message and exits with status 2, leaving existing files untouched.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import AbstractSet, Any

from agents import AGENTS, AgentSpec, agents_for, get_agent
from configs import ConfigError, describe, dump_yaml, load_layers, parse_assignment
from envs import get_suite
from envs.suites import REGISTRY
from plasticity.interventions import REGISTRY as INTERVENTIONS
from runners.rundir import RUN_FORMAT, config_files, make_agent, new_run_dir, open_run, resolve, schema_for
from runners.tracking import make_tracker, require_wandb

__all__ = ["build_parser", "config_files", "main", "resolve", "resume", "schema_for", "shortcut_overrides",
           "split_dotted_flags", "start"]


def build_parser(suite: str, agent: str) -> argparse.ArgumentParser:
    default_agent = get_suite(suite).default_agent
    parser = argparse.ArgumentParser(
        prog=f"python -m runners.{suite}",
        description=f"Train an agent on the {suite} suite ({get_suite(suite).description}) with plasticity "
                    "diagnostics.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=help_epilog(suite, agent),
    )
    parser.add_argument("--agent", "--learner", default=default_agent,
                        help=f"agent (learner) name (default {default_agent})")
    parser.add_argument("--env", help="game / environment id (shortcut for --set env.id=...)")
    parser.add_argument("--env-module", metavar="MODULE[,MODULE]",
                        help="gym and mujoco suites: import these modules first, so that the environments they "
                             "register can be named with --env (shortcut for --set env.module=...)")
    parser.add_argument("--seed", help="shortcut for --set run.seed=...")
    parser.add_argument("--total-steps", help="shortcut for --set run.total_steps=... (agent steps)")
    parser.add_argument("--total-updates", help="offline agents' budget in gradient updates (run.total_steps)")
    parser.add_argument("--eval-episodes", help="shortcut for --set run.eval_episodes=... (episodes per task)")
    parser.add_argument("--device", help="auto, cpu or cuda (shortcut for --set run.device=...)")
    parser.add_argument("--experiment", help="shortcut for --set run.experiment=...")
    parser.add_argument("--run-name", help="shortcut for --set run.run_name=...")
    parser.add_argument("--results-dir", help="shortcut for --set run.results_dir=...")
    parser.add_argument("--intervention", action="append", default=[], metavar="NAME[,NAME]",
                        help=f"plasticity interventions to apply (repeatable): {', '.join(INTERVENTIONS)}")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="extra YAML config layered on the defaults (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one field, e.g. --set ppo.epochs=8 (repeatable); --ppo.epochs=8 works "
                             "too, and a field of the agent's own section needs no section: --epochs=8, "
                             "--similarity-from=RUN_DIR (rainbow.similarity_from)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its latest checkpoint")
    parser.add_argument("--checkpoint", metavar="NAME",
                        help="with --resume: continue from this checkpoint of RUN_DIR/checkpoints/ "
                             "instead of latest.pt (e.g. step_000000004096.pt)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (shortcut for run.progress=false)")
    parser.add_argument("--track", action="store_true", help="log every scalar to Weights & Biases too, as CleanRL "
                        "(tracking.track=true; offline when there is no network, `wandb sync` later)")
    parser.add_argument("--wandb-project", help="shortcut for --set tracking.project=...")
    parser.add_argument("--wandb-entity", help="shortcut for --set tracking.entity=...")
    return parser


def help_epilog(suite: str, agent: str) -> str:
    lines = ["agents:"]
    lines += [f"  {name:<12} {AGENTS[name].description}" for name in agents_for(suite)]
    try:
        envs = get_suite(suite).ids()
    except Exception as exc:  # noqa: BLE001 -- help must not fail because an optional package is missing
        envs = [f"(cannot list: {exc})"]
    lines += ["", f"environments ({suite}):"]
    lines += textwrap.wrap(", ".join(envs), 100, initial_indent="  ", subsequent_indent="  ")
    try:
        spec = get_agent(agent, suite)
        merged, sources = load_layers(config_files(suite, spec))
        docs = describe(schema_for(spec, suite), merged, sources)
    except ConfigError as exc:
        return "\n".join(lines + ["", f"(fields unavailable: {exc})"])
    lines += ["", f"fields for --agent={agent} (override with --set KEY=VALUE; default, then [source]):"]
    for d in docs:
        lines.append(f"  {d.key} = {d.default!r}  ({d.type})")
        lines.append(f"      {d.doc}" + (f"  [{d.source}]" if d.source else ""))
    return "\n".join(lines)


def agent_fields(agent: str, suite: str) -> tuple[str, set[str]]:
    """The config section of ``agent`` and its field names (empty when the agent is unknown here)."""
    spec = AGENTS.get(agent)
    if spec is None or suite not in spec.suites:
        return "", set()
    cls = spec.load()
    return cls.section, {f.name for f in fields(cls.config_class)}


def split_dotted_flags(extra: list[str], section: str = "", names: AbstractSet[str] = frozenset()) -> list[str]:
    """``--ppo.epochs=8`` / ``--ppo.epochs 8`` -> ``ppo.epochs=8``; with ``section`` and its field ``names``,
    ``--similarity-from X`` -> ``rainbow.similarity_from=X`` too; anything else is an error."""
    out, i = [], 0
    while i < len(extra):
        token = extra[i]
        flag = token.split("=")[0]
        key = flag[2:] if "." in flag else f"{section}.{flag[2:].replace('-', '_')}"
        if token.startswith("--") and ("." in flag or flag[2:].replace("-", "_") in names):
            if "=" in token:
                out.append(f"{key}={token.partition('=')[2]}")
            elif i + 1 < len(extra):
                out.append(f"{key}={extra[i + 1]}")
                i += 1
            else:
                raise ConfigError(f"{token} needs a value")
        else:
            raise ConfigError(f"unrecognised argument '{token}' (see --help)")
        i += 1
    return out


def shortcut_overrides(args: argparse.Namespace, suite: str) -> list[tuple[str, str]]:
    """The command line's shortcut flags as ``section.field`` overrides; a budget flag in the wrong unit for
    ``suite`` (``--total-steps`` for an offline suite, ``--total-updates`` for an online one) is refused."""
    budget_flags = {"steps": ("--total-steps", args.total_steps), "updates": ("--total-updates", args.total_updates)}
    wanted = get_suite(suite).budget
    for unit, (flag, value) in budget_flags.items():
        if value is not None and unit != wanted:
            raise ConfigError(f"the {suite} suite's budget is in {wanted}: use {budget_flags[wanted][0]}, not {flag}")
    if args.env_module is not None and "module" not in {f.name for f in fields(get_suite(suite).config_class())}:
        with_modules = [name for name, s in REGISTRY.items() if "module" in {f.name for f in fields(s.config_class())}]
        raise ConfigError(f"--env-module is for the suites that take any registered id ({', '.join(with_modules)}), "
                          f"not {suite}")
    pairs = [("env.id", args.env), ("env.module", args.env_module), ("run.seed", args.seed),
             ("run.total_steps", args.total_steps),
             ("run.total_steps", args.total_updates), ("run.eval_episodes", args.eval_episodes),
             ("run.device", args.device), ("run.experiment", args.experiment), ("run.run_name", args.run_name),
             ("run.results_dir", args.results_dir), ("tracking.project", args.wandb_project),
             ("tracking.entity", args.wandb_entity)]
    out = [(k, v) for k, v in pairs if v is not None]
    if args.no_progress:
        out.append(("run.progress", "false"))
    if args.track:
        out.append(("tracking.track", "true"))
    if args.intervention:
        out.append(("interventions.use", ",".join(args.intervention)))
    return out


def main(suite: str, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--agent", "--learner", default=get_suite(suite).default_agent)
    agent_name = pre.parse_known_args(argv)[0].agent
    parser = build_parser(suite, agent_name)
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = shortcut_overrides(args, suite)
        dotted = split_dotted_flags(extra, *agent_fields(args.agent, suite))
        overrides += [parse_assignment(s) for s in args.set + dotted]
        if args.checkpoint and not args.resume:
            raise ConfigError("--checkpoint names the checkpoint to resume from: use it with --resume RUN_DIR")
        if args.resume:
            return resume(suite, Path(args.resume), overrides, args.checkpoint)
        spec = get_agent(args.agent, suite)
        extra_files = [Path(f) for f in args.config]
        for f in extra_files:
            if not f.is_file():
                raise ConfigError(f"config file {f} does not exist")
        sections, sources = resolve(suite, spec, config_files(suite, spec) + extra_files, overrides)
        if args.print_config:
            print(dump_yaml(sections, sources), end="")
            return 0
        run_dir = new_run_dir(suite, spec.name, sections["run"], sections["env"].id)
        meta = {"format": RUN_FORMAT, "suite": suite, "agent": spec.name, "env": sections["env"].id,
                "seed": sections["run"].seed, "command": shlex.join(["python", "-m", f"runners.{suite}", *argv])}
        return start(run_dir, spec, suite, sections, sources, meta, ckpt=None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def resume(suite: str, run_dir: Path, overrides: list[tuple[str, str]], checkpoint: str | None = None) -> int:
    run = open_run(run_dir, suite, overrides, checkpoint or "latest.pt")
    ckpt_path = run.ckpt_dir / (checkpoint or "latest.pt")
    try:
        ckpt = run.load_checkpoint(ckpt_path)
    except ConfigError as exc:
        from runners.storage import newest_readable_checkpoint
        newest = newest_readable_checkpoint(run.ckpt_dir)
        if newest is None or newest.name == ckpt_path.name:
            raise ConfigError(f"{exc}; {run.ckpt_dir} holds no readable step checkpoint "
                              "to resume from instead") from None
        raise ConfigError(f"{exc}; the newest readable checkpoint is {newest.name}: continue from it with "
                          f"--resume {run_dir} --checkpoint {newest.name}") from None
    if ckpt["agent"]["env_steps"] >= run.sections["run"].total_steps:
        print(f"{run_dir} already reached run.total_steps={run.sections['run'].total_steps}; nothing to do "
              "(raise it with --total-steps to train further)", file=sys.stderr)
        return 0
    if checkpoint is not None:
        later = [p.name for p in run.ckpt_dir.glob("step_*.pt") if p.name > ckpt_path.name]
        if later:
            print(f"note: continuing from {ckpt_path.name}; the later checkpoints {', '.join(sorted(later))} are "
                  "replaced as the run reaches their steps", file=sys.stderr)
    return start(run_dir, run.spec, suite, run.sections, run.sources, run.meta, ckpt, ckpt_path)


def start(run_dir: Path, spec: AgentSpec, suite: str, sections: dict[str, Any], sources: dict[str, str],
          meta: dict[str, Any], ckpt: dict[str, Any] | None, ckpt_path: Path | None = None) -> int:
    import torch

    from envs import make_vec_env
    from runners.storage import (
        atomic_write_json,
        atomic_write_text,
        check_room,
        make_dir,
        payload_nbytes,
        remove_stale_temporaries,
    )
    from runners.train import (
        DEFAULT_TORCH_THREADS,
        Trainer,
        env_seed,
        memory_advice,
        out_of_memory,
        resolve_device,
        seed_everything,
    )

    run = sections["run"]
    cls = spec.load()
    if sections["tracking"].track:
        require_wandb()  # before anything is written
    if run.eval_interval and not cls.can_evaluate():
        raise ConfigError(f"run.eval_interval={run.eval_interval}, but the {spec.name} agent has no evaluation phase "
                          "(set it to 0)")
    if run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda but torch sees no CUDA device; use --device=cpu or auto")
    torch.set_num_threads(run.torch_threads or DEFAULT_TORCH_THREADS)
    device = resolve_device(run.device)
    seed_everything(run.seed)
    envs = make_vec_env(suite, sections["env"], env_seed(run.seed))
    try:
        try:
            agent = make_agent(spec, sections, envs, device, run.seed)
        except (RuntimeError, MemoryError) as exc:
            if not out_of_memory(exc):
                raise
            raise ConfigError(memory_advice(cls.section, sections[cls.section], device, exc)) from None
        diag = sections["diagnostics"]
        monitor = agent.attach_monitor(diag)
        if ckpt is not None:
            remove_stale_temporaries(run_dir / "checkpoints")  # left by a process killed mid-write
        # a writable results directory with room for one checkpoint, before anything is written
        check_room(run_dir, payload_nbytes({"agent": agent.state_dict(), "envs": envs.get_state()}))
        config_text = dump_yaml(sections, sources)
        if ckpt is None:
            if run_dir.exists():
                raise ConfigError(f"run directory {run_dir} already exists")
            make_dir(run_dir)
            try:
                atomic_write_json(run_dir / "run.json", meta)
                atomic_write_text(run_dir / "config.yaml", config_text)
            except ConfigError:
                shutil.rmtree(run_dir, ignore_errors=True)  # it holds nothing yet; a retry may reuse the name
                raise
        elif config_text != (run_dir / "config.yaml").read_text():
            atomic_write_text(run_dir / "config.yaml", config_text)  # a resume that changed the budget or device
        print(f"run directory: {run_dir}", file=sys.stderr)
        try:
            tracker = make_tracker(sections["tracking"], run_dir, sections, group=run.experiment)
        except ConfigError:
            if ckpt is None:
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing trained yet: a retry may reuse the name
            raise
        trainer = Trainer(run_dir, run, agent, agent.envs, monitor, diag.probe_size, meta,  # agent.envs: any wrapper
                          tracker=tracker)
        if ckpt is not None:
            trainer.restore(ckpt)
            trainer.last_good = ckpt_path
        return trainer.run(logged_rows=ckpt["runner"]["logged_rows"] if ckpt else None)
    finally:
        envs.close()
