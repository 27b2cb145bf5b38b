"""Command line shared by the suite runners (``python -m runners.atari``, ``.minatar``, ``.classic``).

Configuration layers, later wins:

1. ``configs/<suite>.yaml``: run, env and diagnostics defaults of the suite;
2. ``configs/<family>.yaml``: the agent's hyperparameters as in its paper (Atari);
3. ``configs/<suite>/<family>.yaml``: the suite's overrides of those (if any);
4. ``configs/<variant>.yaml``: a research variant's few changes (``ppo_pfo``);
5. ``--config FILE`` (repeatable): your own YAML with the same sections;
6. shortcuts (``--env``, ``--seed``, ``--total-steps``, ``--device``, ...), then
   ``--set section.field=value`` or, equivalently, ``--section.field=value``.

Any error in what was asked (unknown agent, game or field, invalid value, a ``--resume``
path that is not a run directory, a corrupt checkpoint, a missing optional package)
prints one message and exits with status 2, leaving existing files untouched.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from agents import AGENTS, AgentSpec, agents_for, get_agent
from configs import (CONFIG_DIR, ConfigError, apply_overrides, build_section, describe, dump_yaml,
                     load_layers, parse_assignment)
from envs import EnvConfig, canonical_id, list_envs
from envs.supervised import TaskStreamConfig
from plasticity.interventions import InterventionConfig, parse_use
from plasticity.monitor import DiagnosticsConfig
from runners.train import RunConfig

DEFAULT_AGENT = {"atari": "ppo_pfo", "minatar": "ppo_pfo", "classic": "ppo_pfo", "supervised": "online"}
RUN_FORMAT = 1
#: fields that may change when a run is resumed
RESUME_OVERRIDABLE = {"run.total_steps", "run.device", "run.progress", "run.torch_threads"}


def config_files(suite: str, spec: AgentSpec) -> list[Path]:
    files = [CONFIG_DIR / f"{suite}.yaml", CONFIG_DIR / "interventions.yaml", CONFIG_DIR / f"{spec.family}.yaml",
             CONFIG_DIR / suite / f"{spec.family}.yaml"]
    if spec.variant:
        files.append(CONFIG_DIR / f"{spec.variant}.yaml")
    return [f for f in files if f.is_file()]


def schema_for(spec: AgentSpec, suite: str) -> dict[str, type]:
    cls = spec.load()
    env = TaskStreamConfig if suite == "supervised" else EnvConfig
    return {"run": RunConfig, "env": env, cls.section: cls.config_class, "diagnostics": DiagnosticsConfig,
            "interventions": InterventionConfig}


def build_parser(suite: str, agent: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m runners.{suite}",
        description=f"Train an agent on the {suite} suite with plasticity diagnostics.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=help_epilog(suite, agent),
    )
    parser.add_argument("--agent", "--learner", default=DEFAULT_AGENT[suite],
                        help=f"agent (learner) name (default {DEFAULT_AGENT[suite]})")
    parser.add_argument("--env", help="game / environment id (shortcut for --set env.id=...)")
    parser.add_argument("--seed", help="shortcut for --set run.seed=...")
    parser.add_argument("--total-steps", help="shortcut for --set run.total_steps=... (agent steps)")
    parser.add_argument("--device", help="auto, cpu or cuda (shortcut for --set run.device=...)")
    parser.add_argument("--experiment", help="shortcut for --set run.experiment=...")
    parser.add_argument("--run-name", help="shortcut for --set run.run_name=...")
    parser.add_argument("--results-dir", help="shortcut for --set run.results_dir=...")
    parser.add_argument("--intervention", action="append", default=[], metavar="NAME[,NAME]",
                        help="plasticity interventions to apply (repeatable): nap, layernorm_wd, rewarm, redo, "
                             "shrink_perturb, soft_shrink_perturb, l2_init, reset")
    parser.add_argument("--similarity-from", metavar="RUN_DIR",
                        help="initialise MASP's similarity matrix from another run (shortcut for rainbow.similarity_from)")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="extra YAML config layered on the defaults (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one field, e.g. --set ppo.epochs=8 (repeatable); "
                             "--ppo.epochs=8 works too")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its latest checkpoint")
    parser.add_argument("--checkpoint", metavar="NAME",
                        help="with --resume: continue from this checkpoint of RUN_DIR/checkpoints/ instead of latest.pt "
                             "(e.g. step_000000004096.pt)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (shortcut for run.progress=false)")
    return parser


def help_epilog(suite: str, agent: str) -> str:
    lines = ["agents:"]
    lines += [f"  {name:<12} {AGENTS[name].description}" for name in agents_for(suite)]
    try:
        envs = list_envs(suite)
    except Exception as exc:  # help must not fail because an optional package is missing
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


def split_dotted_flags(extra: list[str]) -> list[str]:
    """``--ppo.epochs=8`` / ``--ppo.epochs 8`` -> ``ppo.epochs=8``; anything else is an error."""
    out, i = [], 0
    while i < len(extra):
        token = extra[i]
        if token.startswith("--") and "." in token.split("=")[0]:
            if "=" in token:
                out.append(token[2:])
            elif i + 1 < len(extra):
                out.append(f"{token[2:]}={extra[i + 1]}")
                i += 1
            else:
                raise ConfigError(f"{token} needs a value")
        else:
            raise ConfigError(f"unrecognised argument '{token}' (see --help)")
        i += 1
    return out


def shortcut_overrides(args: argparse.Namespace) -> list[tuple[str, str]]:
    pairs = [("env.id", args.env), ("run.seed", args.seed), ("run.total_steps", args.total_steps),
             ("run.device", args.device), ("run.experiment", args.experiment), ("run.run_name", args.run_name),
             ("run.results_dir", args.results_dir), ("rainbow.similarity_from", args.similarity_from)]
    out = [(k, v) for k, v in pairs if v is not None]
    if args.no_progress:
        out.append(("run.progress", "false"))
    if args.intervention:
        out.append(("interventions.use", ",".join(args.intervention)))
    return out


def resolve(suite: str, spec: AgentSpec, files: list[Path], overrides: list[tuple[str, str]]):
    schema = schema_for(spec, suite)
    merged, sources = load_layers(files)
    merged = apply_overrides(merged, overrides, schema)
    for key, _ in overrides:
        sources[key] = "command line"
    sections = {name: build_section(cls, merged.get(name, {}), name) for name, cls in schema.items()}
    sections["env"].id = canonical_id(suite, sections["env"].id)
    parse_use(sections["interventions"].use)
    return sections, sources


def new_run_dir(suite: str, agent: str, run: RunConfig, env_id: str) -> Path:
    experiment = run.experiment or suite
    root = Path(run.results_dir) / experiment
    if run.run_name:
        path = root / run.run_name
        if path.exists():
            raise ConfigError(f"run directory {path} already exists; pick another --run-name or "
                              f"continue it with --resume {path}")
        return path
    base = f"{env_id.replace('/', '-')}__{agent}__s{run.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}_{n}"
    return path


def main(suite: str, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--agent", "--learner", default=DEFAULT_AGENT[suite])
    agent_name = pre.parse_known_args(argv)[0].agent
    parser = build_parser(suite, agent_name)
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = shortcut_overrides(args)
        overrides += [parse_assignment(s) for s in args.set + split_dotted_flags(extra)]
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
    from runners.storage import load_checkpoint, newest_readable_checkpoint
    ckpt_dir = run_dir / "checkpoints"
    ckpt_path = ckpt_dir / (checkpoint or "latest.pt")
    if checkpoint is not None and Path(checkpoint).name != checkpoint:
        raise ConfigError(f"--checkpoint takes a file name in {ckpt_dir}, e.g. step_000000004096.pt; got {checkpoint}")
    missing = [name for name in ("run.json", "config.yaml", f"checkpoints/{ckpt_path.name}")
               if not (run_dir / name).is_file()]
    if missing:
        available = sorted(p.name for p in ckpt_dir.glob("step_*.pt")) if ckpt_dir.is_dir() else []
        hint = ""
        if available and missing[-1].startswith("checkpoints/"):
            hint = f"; checkpoints there: {', '.join(available[-3:])}"
        raise ConfigError(f"{run_dir} is not a run directory (missing {', '.join(missing)}){hint}")
    try:
        meta = json.loads((run_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{run_dir / 'run.json'} is unreadable: {exc}") from None
    if meta.get("format") != RUN_FORMAT:
        raise ConfigError(f"{run_dir} was written by another version (run format {meta.get('format')}, "
                          f"this version reads {RUN_FORMAT})")
    if meta.get("suite") != suite:
        raise ConfigError(f"{run_dir} is a {meta.get('suite')} run: resume it with python -m runners.{meta.get('suite')}")
    bad = [k for k, _ in overrides if k not in RESUME_OVERRIDABLE]
    if bad:
        raise ConfigError(f"--resume keeps the run's config; '{bad[0]}' cannot change "
                          f"(allowed: {', '.join(sorted(RESUME_OVERRIDABLE))})")
    spec = get_agent(meta["agent"], suite)
    # the run's resolved config over this version's defaults: a field added since the run started
    # takes its default (said below); every field the run had keeps its value
    sections, sources = resolve(suite, spec, config_files(suite, spec) + [run_dir / "config.yaml"], overrides)
    stored = load_layers([run_dir / "config.yaml"])[0]
    added = [f"{name}.{f.name}" for name, cls in schema_for(spec, suite).items() for f in fields(cls)
             if f.name not in stored.get(name, {})]
    if added:
        print(f"note: {run_dir} has no value for {', '.join(added)} (added since it started); "
              "using this version's defaults", file=sys.stderr)
    try:
        ckpt = load_checkpoint(ckpt_path)
    except ConfigError as exc:
        newest = newest_readable_checkpoint(ckpt_dir)
        if newest is None or newest.name == ckpt_path.name:
            raise ConfigError(f"{exc}; {ckpt_dir} holds no readable step checkpoint to resume from instead") from None
        raise ConfigError(f"{exc}; the newest readable checkpoint is {newest.name}: continue from it with "
                          f"--resume {run_dir} --checkpoint {newest.name}") from None
    if ckpt["agent"]["env_steps"] >= sections["run"].total_steps:
        print(f"{run_dir} already reached run.total_steps={sections['run'].total_steps}; nothing to do "
              "(raise it with --total-steps to train further)", file=sys.stderr)
        return 0
    if checkpoint is not None:
        later = [p.name for p in ckpt_dir.glob("step_*.pt") if p.name > ckpt_path.name]
        if later:
            print(f"note: continuing from {ckpt_path.name}; the later checkpoints {', '.join(sorted(later))} are "
                  "replaced as the run reaches their steps", file=sys.stderr)
    return start(run_dir, spec, suite, sections, sources, meta, ckpt, ckpt_path)


def start(run_dir: Path, spec: AgentSpec, suite: str, sections: dict[str, Any], sources: dict[str, str],
          meta: dict[str, Any], ckpt: dict[str, Any] | None, ckpt_path: Path | None = None) -> int:
    import torch

    from envs import make_vec_env
    from plasticity.interventions import Interventions
    from plasticity.monitor import PlasticityMonitor
    from runners.storage import (atomic_write_json, atomic_write_text, check_room, make_dir, payload_nbytes,
                                 remove_stale_temporaries)
    from runners.train import DEFAULT_TORCH_THREADS, Trainer, env_seed, resolve_device, seed_everything

    run = sections["run"]
    if run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda but torch sees no CUDA device; use --device=cpu or auto")
    torch.set_num_threads(run.torch_threads or DEFAULT_TORCH_THREADS)
    device = resolve_device(run.device)
    seed_everything(run.seed)
    envs = make_vec_env(suite, sections["env"], env_seed(run.seed))
    try:
        agent_cfg = sections[spec.load().section]
        agent = spec.load()(agent_cfg, envs, device, run.total_steps, run.seed,
                            Interventions(sections["interventions"]))
        diag = sections["diagnostics"]
        monitor = PlasticityMonitor(agent.networks(), agent.optimizers(), diag, loss_fn=agent.diagnostic_loss)
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
        trainer = Trainer(run_dir, run, agent, agent.envs, monitor, diag.probe_size, meta)  # agent.envs: any wrapper
        if ckpt is not None:
            trainer.restore(ckpt)
            trainer.last_good = ckpt_path
        return trainer.run(logged_rows=ckpt["runner"]["logged_rows"] if ckpt else None)
    finally:
        envs.close()
