"""A run's configuration and its run directory: how the config is layered, and the one loader of a run.

* :func:`config_files`, :func:`schema_for` and :func:`resolve`: the configuration layers of a
  suite and agent (see ``runners/cli.py``) and their validated sections; the ``env`` section's
  dataclass comes from the suite's record (:mod:`envs.suites`).
* :func:`open_run`: a run directory read back (``run.json``, ``config.yaml`` over this version's
  defaults, the agent's spec), what ``--resume`` and ``python -m runners.probe`` both use;
  :meth:`Run.load_checkpoint` loads one of its checkpoints and :meth:`Run.make_agent` rebuilds
  its agent.
* :func:`build_agent`: an agent built from its configs and overrides alone, for tests and measurements.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from agents import AgentSpec, get_agent
from configs import CONFIG_DIR, ConfigError, apply_overrides, build_section, load_layers
from envs import canonical_id, get_suite
from plasticity.interventions import InterventionConfig, parse_use
from plasticity.monitor import DiagnosticsConfig
from runners.tracking import TrackingConfig
from runners.train import RunConfig

RUN_FORMAT = 1
#: fields that may change when a run is resumed
RESUME_OVERRIDABLE = {"run.total_steps", "run.device", "run.progress", "run.torch_threads", "tracking.track",
                      "tracking.project", "tracking.entity", "tracking.mode"}


def config_files(suite: str, spec: AgentSpec) -> list[Path]:
    files = [CONFIG_DIR / f"{suite}.yaml", CONFIG_DIR / "interventions.yaml", CONFIG_DIR / "tracking.yaml",
             CONFIG_DIR / f"{spec.family}.yaml",
             CONFIG_DIR / (get_suite(suite).family_configs or suite) / f"{spec.family}.yaml"]
    if spec.variant:
        files.append(CONFIG_DIR / f"{spec.variant}.yaml")
    return [f for f in files if f.is_file()]


def schema_for(spec: AgentSpec, suite: str) -> dict[str, type]:
    cls = spec.load()
    return {"run": RunConfig, "env": get_suite(suite).config_class(), cls.section: cls.config_class,
            **cls.SECTIONS, "diagnostics": DiagnosticsConfig, "interventions": InterventionConfig,
            "tracking": TrackingConfig}


def resolve(suite: str, spec: AgentSpec, files: list[Path], overrides: list[tuple[str, str]]):
    schema = schema_for(spec, suite)
    merged, sources = load_layers(files)
    merged = apply_overrides(merged, overrides, schema)
    for key, _ in overrides:
        sources[key] = "command line"
    sections = {name: build_section(cls, merged.get(name, {}), name) for name, cls in schema.items()}
    get_suite(suite).prepare(sections["env"])
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
    base = f"{env_id.replace('/', '-').replace(',', '+')}__{agent}__s{run.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}_{n}"
    return path


def run_progress(run_dir: Path) -> str:
    """What a run directory holds for a caller that starts or continues it under a fixed name: ``completed``,
    ``resume`` (a checkpoint to continue from) or ``start`` (nothing, or a run that died before its first
    checkpoint, which is removed: there is nothing in it to keep)."""
    summary = run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
        return "completed"
    if (run_dir / "checkpoints" / "latest.pt").exists():
        return "resume"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return "start"


def add_pretraining_flags(parser: Any, budget_flag: str, budget: int) -> None:
    """The flags of a runner that starts from a pre-trained run (``--pretrained``) or pre-trains one on demand
    (its budget ``budget_flag``), with its ``--seed`` and ``--results-dir``."""
    parser.add_argument("--pretrained", metavar="RUN_DIR", help="the pre-trained run (default: pre-train on demand)")
    parser.add_argument(budget_flag, type=int, default=budget,
                        help=f"budget of an on-demand pre-training run (default {budget:,})")
    parser.add_argument("--seed", default="1", help="seed of the run and of its on-demand pre-training")
    parser.add_argument("--results-dir", default="results", help="results root (default results)")


def train_or_reuse(suite: str, run_dir: Path, start: list[str], passthrough: Sequence[str] = (),
                   what: str = "run") -> Path | int:
    """The run under the fixed name ``run_dir``, completed: reused when it is, resumed when it was cut short,
    else started with ``start`` (the suite runner's flags; the name is added). ``passthrough`` goes to a start
    and a resume alike (e.g. ``--no-progress``). Returns ``run_dir``, or the exit code of a failed run."""
    from runners.cli import main as run_suite
    state = run_progress(run_dir)
    if state == "completed":
        print(f"{what}: {run_dir} (reused)", file=sys.stderr)
        return run_dir
    if state == "resume":
        code = run_suite(suite, ["--resume", str(run_dir), *passthrough])
    else:
        code = run_suite(suite, [*start, f"--results-dir={run_dir.parent.parent}",
                                 f"--experiment={run_dir.parent.name}", f"--run-name={run_dir.name}", *passthrough])
    return run_dir if code == 0 else code


def check_run_format(meta: dict[str, Any], run_dir: Path) -> None:
    if meta.get("format") != RUN_FORMAT:
        raise ConfigError(f"{run_dir} was written by another version (run format {meta.get('format')}, "
                          f"this version reads {RUN_FORMAT})")


def make_agent(spec: AgentSpec, sections: dict[str, Any], envs, device, seed: int):
    """The agent of ``spec`` with its section of ``sections``, on ``envs``, with fresh networks."""
    from plasticity.interventions import Interventions
    cls = spec.load()
    return cls(sections[cls.section], envs, device, sections["run"].total_steps, seed,
               Interventions(sections["interventions"]), sections={name: sections[name] for name in cls.SECTIONS})


def build_agent(suite: str, agent: str, overrides: Sequence[tuple[str, str]] = (), seed: int = 0):
    """``agent`` of ``suite`` with its configs and ``overrides`` (``(key, value)`` pairs), on its suite's
    environments seeded ``seed``, on the CPU, with no run directory: for tests and in-process measurements."""
    import torch

    from envs import make_vec_env
    spec = get_agent(agent, suite)
    sections, _ = resolve(suite, spec, config_files(suite, spec), list(overrides))
    return make_agent(spec, sections, make_vec_env(suite, sections["env"], seed), torch.device("cpu"), seed)


@dataclass
class Run:
    """A run directory read back: its run.json and its resolved config (with sources)."""
    path: Path
    meta: dict[str, Any]
    spec: AgentSpec
    sections: dict[str, Any]
    sources: dict[str, str]

    @property
    def suite(self) -> str:
        return self.meta["suite"]

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    def step_checkpoints(self) -> list[tuple[int, Path]]:
        """The periodic checkpoints ``step_<env-steps>.pt``, oldest first, or ConfigError when there are none."""
        found = sorted((int(p.stem.split("_")[1]), p) for p in self.ckpt_dir.glob("step_*.pt"))
        if not found:
            raise ConfigError(f"{self.path} has no periodic checkpoints (checkpoints/step_*.pt)")
        return found

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        """A checkpoint of this run (``storage.load_checkpoint``: format checked, ConfigError when unreadable)."""
        from runners.storage import load_checkpoint
        return load_checkpoint(path)

    def make_agent(self, envs, device, seed: int):
        return make_agent(self.spec, self.sections, envs, device, seed)


def open_run(run_dir: Path, suite: str | None = None, overrides: Sequence[tuple[str, str]] = (),
             checkpoint: str | None = None) -> Run:
    """Read a run directory back, or raise ConfigError naming what is wrong.

    ``suite``: the suite it must belong to (None: any). ``overrides``: the fields of
    :data:`RESUME_OVERRIDABLE` to change. ``checkpoint``: a file of ``checkpoints/`` that must
    exist too. The config is the run's ``config.yaml`` over this version's defaults: a field
    added since the run started takes its default (said on stderr); every field the run had
    keeps its value.
    """
    ckpt_dir = run_dir / "checkpoints"
    if checkpoint is not None and Path(checkpoint).name != checkpoint:
        raise ConfigError(f"--checkpoint takes a file name in {ckpt_dir}, e.g. step_000000004096.pt; got {checkpoint}")
    needed = ["run.json", "config.yaml"] + ([f"checkpoints/{checkpoint}"] if checkpoint is not None else [])
    missing = [name for name in needed if not (run_dir / name).is_file()]
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
    check_run_format(meta, run_dir)
    if suite is not None and meta.get("suite") != suite:
        raise ConfigError(f"{run_dir} is a {meta.get('suite')} run: "
                          f"resume it with python -m runners.{meta.get('suite')}")
    bad = [k for k, _ in overrides if k not in RESUME_OVERRIDABLE]
    if bad:
        raise ConfigError(f"--resume keeps the run's config; '{bad[0]}' cannot change "
                          f"(allowed: {', '.join(sorted(RESUME_OVERRIDABLE))})")
    suite = meta["suite"]
    spec = get_agent(meta["agent"], suite)
    sections, sources = resolve(suite, spec, config_files(suite, spec) + [run_dir / "config.yaml"], list(overrides))
    stored = load_layers([run_dir / "config.yaml"])[0]
    added = [f"{name}.{f.name}" for name, cls in schema_for(spec, suite).items() for f in fields(cls)
             if f.name not in stored.get(name, {})]
    if added:
        print(f"note: {run_dir} has no value for {', '.join(added)} (added since it started); "
              "using this version's defaults", file=sys.stderr)
    return Run(run_dir, meta, spec, sections, sources)
