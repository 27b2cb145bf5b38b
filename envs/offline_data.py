"""Learning histories on disk, one Minari dataset per task, written atomically and read back checked.

Layout under a root folder (``--root``, else ``$PLASTICITY_DATASETS``, else ``results/datasets``)::

    <root>/<env id>/<task name>/          e.g. results/datasets/DarkRoom-10x10/goal-2-0/
        data/main_data.hdf5               Minari 0.5 (HDF5 back end): one group per episode with
        data/metadata.json                observations (T+1, 2), actions, rewards, terminations, truncations
        history.json                      this suite's manifest: env id, task, generator name/version,
                                          settings, seed, episode and step counts, checksum of data/

The format is Farama's Minari (``minari.create_dataset_from_buffers``), so a dataset also opens
with ``minari.MinariDataset("<dir>/data")`` and, once :mod:`envs.gridworlds` is imported,
``recover_environment()`` rebuilds its task.

Minari measured here (0.5.4 with h5py 3.16, 2 busy CPU cores): fit, at a price in size.
Minari stores every field of every episode as its own chunked HDF5 dataset (~3 kB of overhead
each), so a 200-episode Dark-Room 10x10 history (20k steps, ~0.45 MB of raw arrays) takes
3.3 MB and ~0.2 s to read back (the per-dataset reads dominate; plain h5py on the same file is
no faster). All 100 Dark-Room 10x10 tasks: built in 27 s (1.3 s of it learning), 334 MB, the 80
training tasks load in 20 s; Dark Key-Door 10x10 (300 episodes): 46 s, 502 MB, 23 s to load all
100; Dark-Room 20x20 (400 episodes of 400 steps) is estimated at ~1 GB. Loading is once per
training run, and the format is the standard one, so it is kept; a stacked-array HDF5 file
per task would be ~10x smaller and faster if that ever matters.

Writes are atomic: Minari writes into a temporary folder beside the target
(``<root>/<env id>/.tmp-*``), the manifest with the checksum is written last, and the folder is
renamed into place; a crash leaves only a ``.tmp-*`` folder, which no reader takes for a
dataset and :func:`ensure_datasets` removes. An existing dataset is never overwritten. Reading
checks the manifest, the checksum and the counts; anything wrong is a one-line ConfigError.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from configs import ConfigError
from envs.gridworlds import best_return, check_task, get_spec, gym_id, split_tasks, task_name
from envs.histories import GENERATOR, GENERATOR_VERSION, TaskHistory, default_settings, learning_histories

FORMAT = 1  # this module's layout (manifest fields, folder names)
MANIFEST = "history.json"
DEMONSTRATIONS_MANIFEST = "trajectories.json"  # envs.trajectories' manifest (listed here too)
ROOT_ENV = "PLASTICITY_DATASETS"
DEFAULT_ROOT = Path("results/datasets")
SPLITS = ("train", "heldout", "all")


def default_root() -> Path:
    """``$PLASTICITY_DATASETS`` if set, else ``results/datasets`` (relative to the working directory)."""
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def dataset_dir(root: Path, env_id: str, task: Any) -> Path:
    return Path(root) / get_spec(env_id).env_id / task_name(env_id, task)


def build_command(env_id: str, split: str, root: Path) -> str:
    """The command that builds a split's datasets (named in 'missing dataset' errors)."""
    return f"python -m runners.datasets {get_spec(env_id).env_id} --tasks {split} --root {root}"


# -- checksums and the manifest -----------------------------------------------------------

def checksum(data_dir: Path) -> str:
    """sha256 over the files of a dataset's ``data/`` folder (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(data_dir).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path, name: str = MANIFEST) -> dict[str, Any]:
    """A dataset folder's manifest (``name``), or ConfigError when it is absent or unreadable."""
    try:
        manifest = json.loads((path / name).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} is not a complete dataset (no {name}); delete it and rebuild") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path / name} is corrupt ({type(exc).__name__}); delete {path} and rebuild") from None
    if not isinstance(manifest, dict):
        raise ConfigError(f"{path / name} is corrupt (not a mapping); delete {path} and rebuild")
    return manifest


def check_manifest(path: Path, manifest: dict[str, Any], env_id: str, task: np.ndarray | None,
                   seed: int | None) -> None:
    """ConfigError unless the manifest is this generator's, for ``env_id`` (and ``task``, ``seed`` when given)."""
    env_id = get_spec(env_id).env_id
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{path} has dataset format {manifest.get('format')}, this version reads {FORMAT}; "
                          "rebuild it under another --root")
    if manifest.get("env_id") != env_id:
        raise ConfigError(f"{path} was built for {manifest.get('env_id')}, not {env_id}")
    if task is not None and list(manifest.get("task", [])) != np.asarray(task).tolist():
        raise ConfigError(f"{path} holds task {manifest.get('task')}, not {np.asarray(task).tolist()}")
    made_by = (manifest.get("generator"), manifest.get("generator_version"))
    if made_by != (GENERATOR, GENERATOR_VERSION):
        raise ConfigError(f"{path} was built by {made_by[0]} v{made_by[1]}, this version needs {GENERATOR} "
                          f"v{GENERATOR_VERSION}; rebuild it under another --root")
    if seed is not None and manifest.get("seed") != seed:
        raise ConfigError(f"{path} was built with seed {manifest.get('seed')}, not {seed}; "
                          "use that seed or another --root")


# -- writing -------------------------------------------------------------------------------

def _import_minari() -> Any:
    try:
        import minari
    except ImportError:
        raise ConfigError("the learning-history datasets need Minari: pip install 'minari[hdf5]>=0.5'") from None
    return minari


@contextmanager
def _minari_root(path: Path) -> Iterator[None]:
    """Point Minari (which places datasets under ``$MINARI_DATASETS_PATH``) at ``path`` for a while."""
    before = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = before


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.rglob("*"), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def minari_write(folder: Path, dataset_id: str, episodes: list[dict[str, np.ndarray]], description: str,
                 algorithm: str, code: str, **spaces: Any) -> Path:
    """Write ``episodes`` (observations (T+1, ...), actions, rewards, terminations, truncations) as the Minari
    dataset ``dataset_id`` inside ``folder``; ``spaces``: ``env=`` or ``observation_space=``/``action_space=``.
    Returns the dataset's own folder."""
    minari = _import_minari()
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(id=i, infos={}, **ep) for i, ep in enumerate(episodes)]
    with _minari_root(folder), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Minari's reminders about e-mail addresses and eval envs
        minari.create_dataset_from_buffers(dataset_id, buffers, algorithm_name=algorithm, author="plasticity-suite",
                                           code_permalink=code, description=description, **spaces)
    return folder / dataset_id


def minari_episodes(data: Path) -> list[Any]:
    """The episodes of the Minari dataset in ``data`` (each with observations, actions, rewards, ...)."""
    return list(_import_minari().MinariDataset(data).iterate_episodes())


def _minari_write(folder: Path, history: TaskHistory) -> Path:
    import gymnasium as gym

    env = gym.make(gym_id(history.env_id), task=np.asarray(history.task).tolist())
    name = task_name(history.env_id, history.task)
    return minari_write(folder, f"{history.env_id.lower()}-{name}-v{GENERATOR_VERSION}", history.episodes(),
                        f"learning history of {GENERATOR} on {history.env_id} task {history.task.tolist()}",
                        f"{GENERATOR} v{GENERATOR_VERSION}", "envs/histories.py", env=env)


def _publish(tmp: Path, target: Path) -> None:
    """Rename the finished dataset folder into place (atomic; fails if ``target`` already exists)."""
    os.rename(tmp, target)


def publish_dataset(target: Path, write: Callable[[Path], Path], manifest: dict[str, Any],
                    name: str = MANIFEST) -> Path:
    """Write a dataset into ``target`` atomically: ``write(tmp)`` stores the Minari dataset inside a temporary
    folder beside ``target`` and returns its folder, the manifest (with the checksum of its ``data/``) is added
    last, and the folder is renamed into place. Never overwrites; WriteError if the disk refuses."""
    from runners.storage import WriteError, atomic_write_json, make_dir

    if target.exists():
        raise ConfigError(f"{target} already exists; nothing was overwritten")
    make_dir(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        folder = write(tmp)
        atomic_write_json(folder / name, {**manifest, "minari_version": _minari_version(),
                                              "checksum": checksum(folder / "data")})
        _fsync_tree(folder)
        _publish(folder, target)
    except OSError as exc:
        if target.exists() and (target / name).exists():  # another process finished it first
            return target
        raise WriteError(target, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_history(root: Path, history: TaskHistory) -> Path:
    """Store one task's history as ``<root>/<env id>/<task name>``, atomically; never overwrites.

    Raises ConfigError if that dataset already exists, WriteError if the disk refuses.
    """
    spec = get_spec(history.env_id)
    task = check_task(spec, history.task)
    root = Path(root).absolute()  # Minari resolves a relative MINARI_DATASETS_PATH against its own default
    target = dataset_dir(root, spec.env_id, task)
    manifest = {
        "format": FORMAT, "env_id": spec.env_id, "task": task.tolist(), "task_name": target.name,
        "generator": GENERATOR, "generator_version": GENERATOR_VERSION,
        "seed": history.meta.get("seed"), "settings": history.meta.get("settings"),
        "episodes": history.num_episodes, "steps": int(len(history.actions)),
        "best_return": best_return(spec.env_id, task),
    }
    return publish_dataset(target, lambda tmp: _minari_write(tmp, history), manifest)


def _minari_version() -> str:
    minari = _import_minari()
    return str(getattr(minari, "__version__", "unknown"))


# -- reading -------------------------------------------------------------------------------

def verify_dataset(root: Path, env_id: str, task: Any, seed: int | None = None, split: str = "all") -> dict[str, Any]:
    """Check one task's dataset without loading it (manifest and checksum); returns the manifest.

    ConfigError (one line) if it is missing, incomplete, corrupt, or was built for another
    environment, task, generator version or (when ``seed`` is given) seed.
    """
    spec = get_spec(env_id)
    task = check_task(spec, task)
    path = dataset_dir(root, spec.env_id, task)
    if not path.is_dir():
        raise ConfigError(f"no {spec.env_id} dataset for task {task_name(spec.env_id, task)} under {root}; "
                          f"build it with: {build_command(spec.env_id, split, root)}")
    manifest = read_manifest(path)
    check_manifest(path, manifest, spec.env_id, task, seed)
    data = path / "data"
    if not data.is_dir() or checksum(data) != manifest.get("checksum"):
        raise ConfigError(f"{path} is corrupt or truncated (checksum mismatch); delete it and rebuild")
    return manifest


def read_history(root: Path, env_id: str, task: Any, seed: int | None = None, split: str = "all") -> TaskHistory:
    """Load and check one task's history; ConfigError (one line) if it is missing, corrupt or foreign."""
    spec = get_spec(env_id)
    task = check_task(spec, task)
    manifest = verify_dataset(root, spec.env_id, task, seed, split)
    path = dataset_dir(root, spec.env_id, task)
    data = path / "data"
    try:
        history = _minari_read(data, spec.env_id, task)
    except ConfigError:
        raise
    except Exception as exc:  # h5py and Minari raise many types on a damaged file
        raise ConfigError(f"{path} is unreadable ({type(exc).__name__}: {str(exc)[:80]}); "
                          "delete it and rebuild") from None
    if history.num_episodes != manifest.get("episodes") or len(history.actions) != manifest.get("steps"):
        raise ConfigError(f"{path} holds {history.num_episodes} episodes / {len(history.actions)} steps, its "
                          f"manifest says {manifest.get('episodes')} / {manifest.get('steps')}; delete it and rebuild")
    history.meta = manifest
    return history


def _minari_read(data: Path, env_id: str, task: np.ndarray) -> TaskHistory:
    episodes = minari_episodes(data)
    lengths = [len(ep.actions) for ep in episodes]
    return TaskHistory(
        env_id, task,
        observations=np.concatenate([ep.observations[:-1] for ep in episodes]).astype(np.float32),
        actions=np.concatenate([ep.actions for ep in episodes]).astype(np.int64),
        rewards=np.concatenate([ep.rewards for ep in episodes]).astype(np.float32),
        episode=np.repeat(np.arange(len(episodes)), lengths),
        dones=np.concatenate([ep.truncations | ep.terminations for ep in episodes]),
        final_observations=np.stack([ep.observations[-1] for ep in episodes]).astype(np.float32))


def load_histories(root: Path, env_id: str, split: str = "train", seed: int | None = None,
                   limit: int | None = None) -> list[TaskHistory]:
    """Every task of ``split`` (train / heldout / all), or its first ``limit``, in the official task order, checked.

    ``seed`` None accepts any seed the data was built with; otherwise it must match.
    """
    return [read_history(root, env_id, task, seed, split) for task in split_tasks(env_id, split)[:limit]]


# -- building what is missing ----------------------------------------------------------------

def remove_stale_temporaries(root: Path, env_id: str) -> int:
    """Delete the ``.tmp-*`` folders that killed builds left under ``<root>/<env id>``; returns how many."""
    return remove_stale_folders(Path(root) / get_spec(env_id).env_id)


def remove_stale_folders(folder: Path) -> int:
    """Delete the ``.tmp-*`` folders that killed builds (:func:`publish_dataset`) left in ``folder``."""
    stale = list(folder.glob(".tmp-*")) if folder.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


def ensure_datasets(root: Path, env_id: str, splits: tuple[str, ...] | list[str] = ("train", "heldout"),
                    seed: int = 0, progress: bool = True, limit: int | None = None) -> list[Path]:
    """Build the missing datasets of ``splits`` (of each, its first ``limit`` tasks); check the existing ones
    first (nothing is overwritten).

    Returns the folders built. An existing dataset that is corrupt or was built for another
    environment, generator version or seed raises ConfigError before anything is built.
    """
    spec = get_spec(env_id)
    root = Path(root)
    tasks = {task_name(spec.env_id, t): t for split in splits for t in split_tasks(spec.env_id, split)[:limit]}
    missing = []
    for name, task in tasks.items():
        if dataset_dir(root, spec.env_id, task).exists():
            verify_dataset(root, spec.env_id, task, seed)  # raises if it is not what would be built
        else:
            missing.append(task)
    remove_stale_temporaries(root, spec.env_id)
    if not missing:
        return []
    histories = learning_histories(spec.env_id, np.stack(missing), seed, default_settings(spec.env_id), progress)
    built = []
    for h in histories:
        try:
            built.append(write_history(root, h))
        except ConfigError:
            if not dataset_dir(root, spec.env_id, h.task).exists():
                raise
            verify_dataset(root, spec.env_id, h.task, seed)  # another process built it meanwhile: it must match
    return built


# -- listing -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetInfo:
    path: Path
    env_id: str
    task: str
    episodes: int | None
    steps: int | None
    seed: int | None
    size_bytes: int
    checksum: str
    status: str  # "ok" or why it cannot be used


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_datasets(root: Path) -> list[DatasetInfo]:
    """Every dataset folder under ``root`` (temporaries skipped) with its manifest and whether it checks out."""
    out = []
    root = Path(root)
    for env_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for path in sorted(p for p in env_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            demonstrations = (path / DEMONSTRATIONS_MANIFEST).exists()  # envs.trajectories' datasets
            try:
                manifest = read_manifest(path, DEMONSTRATIONS_MANIFEST if demonstrations else MANIFEST)
            except ConfigError as exc:
                out.append(DatasetInfo(path, env_dir.name, path.name, None, None, None, folder_bytes(path), "",
                                       str(exc)))
                continue
            status = "ok"
            try:
                if not demonstrations:
                    check_manifest(path, manifest, env_dir.name, None, None)
                if checksum(path / "data") != manifest.get("checksum"):
                    status = "corrupt (checksum mismatch)"
            except ConfigError as exc:
                status = str(exc)
            out.append(DatasetInfo(path, env_dir.name, path.name, manifest.get("episodes"), manifest.get("steps"),
                                   manifest.get("seed"), folder_bytes(path), str(manifest.get("checksum", "")), status))
    return out
