"""Learning histories and their Minari datasets: round trip, atomic writes, validation, the CLI."""
import importlib.util
import json

import numpy as np
import pytest

import envs.offline_data as od
from configs import ConfigError
from envs.gridworlds import best_return, task_split
from envs.histories import QLearning, learning_histories
from runners.datasets import main

TASKS = np.array([[2, 0], [5, 5], [9, 9]])
SHORT = QLearning(episodes=8)
needs_minari = pytest.mark.skipif(importlib.util.find_spec("minari") is None,
                                  reason="the datasets need minari[hdf5] (not a core dependency)")


@pytest.fixture(scope="module")
def short_histories():
    return learning_histories("DarkRoom-10x10", TASKS, seed=3, settings=SHORT, progress=False)


@pytest.fixture
def written(tmp_path, short_histories):
    for h in short_histories:
        od.write_history(tmp_path, h)
    return tmp_path


def data_file(root, task=(2, 0)):
    return od.dataset_dir(root, "DarkRoom-10x10", np.array(task)) / "data" / "main_data.hdf5"


@needs_minari
def test_round_trip_gives_the_same_arrays(written, short_histories):
    for h in short_histories:
        back = od.read_history(written, "DarkRoom-10x10", h.task, seed=3)
        for field in ("observations", "actions", "rewards", "episode", "dones", "final_observations"):
            a, b = getattr(h, field), getattr(back, field)
            assert a.dtype == b.dtype and a.shape == b.shape, field
            np.testing.assert_array_equal(a, b, err_msg=field)
        assert back.meta["episodes"] == 8 and back.meta["steps"] == 800 and back.meta["seed"] == 3
        assert back.meta["best_return"] == best_return("DarkRoom-10x10", h.task)
        np.testing.assert_array_equal(back.episode_returns(), h.episode_returns())
    # it is a standard Minari dataset, and its environment comes back
    from minari import MinariDataset
    ds = MinariDataset(od.dataset_dir(written, "DarkRoom-10x10", TASKS[0]) / "data")
    assert ds.total_episodes == 8 and ds.total_steps == 800
    env = ds.recover_environment()
    assert env.unwrapped.task.tolist() == [2, 0]


def test_histories_are_deterministic_and_independent_of_the_batch(short_histories):
    again = learning_histories("DarkRoom-10x10", TASKS[[2, 0]], seed=3, settings=SHORT, progress=False)
    np.testing.assert_array_equal(again[1].actions, short_histories[0].actions)
    np.testing.assert_array_equal(again[0].observations, short_histories[2].observations)
    other = learning_histories("DarkRoom-10x10", TASKS[:1], seed=4, settings=SHORT, progress=False)
    assert not np.array_equal(other[0].actions, short_histories[0].actions)


@needs_minari
def test_a_crash_mid_write_leaves_no_dataset_that_loads(tmp_path, short_histories, monkeypatch):
    def crash(tmp, target):
        raise RuntimeError("killed")

    monkeypatch.setattr(od, "_publish", crash)
    with pytest.raises(RuntimeError):
        od.write_history(tmp_path, short_histories[0])
    assert not od.dataset_dir(tmp_path, "DarkRoom-10x10", TASKS[0]).exists()
    assert list((tmp_path / "DarkRoom-10x10").iterdir()) == []  # the temporary folder went too
    # a killed process cannot clean up: its temporary folder stays, and is never taken for a dataset
    monkeypatch.setattr(od.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(RuntimeError):
        od.write_history(tmp_path, short_histories[0])
    monkeypatch.undo()
    assert [p.name.startswith(".tmp-goal-2-0-") for p in (tmp_path / "DarkRoom-10x10").iterdir()] == [True]
    with pytest.raises(ConfigError, match="build it with: python -m runners.datasets DarkRoom-10x10"):
        od.read_history(tmp_path, "DarkRoom-10x10", TASKS[0])
    assert od.list_datasets(tmp_path) == []
    assert od.remove_stale_temporaries(tmp_path, "DarkRoom-10x10") == 1


@needs_minari
def test_existing_datasets_are_never_overwritten(written, short_histories):
    before = data_file(written).read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        od.write_history(written, short_histories[0])
    assert data_file(written).read_bytes() == before


@needs_minari
@pytest.mark.parametrize("damage", ["flip", "truncate", "no_manifest", "bad_manifest", "rehashed"])
def test_corrupt_or_truncated_datasets_are_config_errors(written, damage):
    path, folder = data_file(written), od.dataset_dir(written, "DarkRoom-10x10", TASKS[0])
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage in ("truncate", "rehashed"):
        path.write_bytes(bytes(raw[: len(raw) // 3]))
        if damage == "rehashed":  # the checksum agrees, the HDF5 file is still cut short
            manifest = json.loads((folder / od.MANIFEST).read_text())
            manifest["checksum"] = od.checksum(folder / "data")
            (folder / od.MANIFEST).write_text(json.dumps(manifest))
    elif damage == "no_manifest":
        (folder / od.MANIFEST).unlink()
    else:
        (folder / od.MANIFEST).write_text("{not json")
    with pytest.raises(ConfigError) as info:
        od.read_history(written, "DarkRoom-10x10", TASKS[0])
    assert "\n" not in str(info.value) and str(folder) in str(info.value)
    flagged = [r.status == "ok" for r in od.list_datasets(written)].count(False)
    assert flagged == (0 if damage == "rehashed" else 1)  # --list checks manifests and checksums, not HDF5


@needs_minari
@pytest.mark.parametrize("field, value, match", [("env_id", "DarkRoom-20x20", "built for DarkRoom-20x20"),
                                                 ("generator_version", 0, "v0, this version needs"),
                                                 ("format", 99, "format 99"),
                                                 ("seed", 7, "seed 7, not 3")])
def test_datasets_of_another_environment_or_version_are_config_errors(written, field, value, match):
    manifest_path = od.dataset_dir(written, "DarkRoom-10x10", TASKS[1]) / od.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest[field] = value
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=match):
        od.read_history(written, "DarkRoom-10x10", TASKS[1], seed=3)


@needs_minari
def test_cli_builds_lists_and_refuses_with_exit_code_2(tmp_path, capsys):
    root = str(tmp_path)
    assert main(["DarkRoom-9x9", "--root", root]) == 2
    assert "error: unknown grid world 'DarkRoom-9x9'; valid ids: DarkRoom-10x10" in capsys.readouterr().err
    assert main(["DarkRoom-10x10", "--tasks", "test", "--root", root]) == 2
    assert "valid splits: train, heldout, all" in capsys.readouterr().err
    assert main(["--root", root]) == 2
    assert main(["--list", "--root", root]) == 0
    assert "no datasets" in capsys.readouterr().out

    assert main(["DarkRoom-10x10", "--tasks", "heldout", "--root", root, "--no-progress"]) == 0
    assert "built 20 datasets" in capsys.readouterr().err
    assert main(["--list", "--root", root]) == 0
    listing = capsys.readouterr().out
    assert listing.count(" ok\n") + listing.endswith(" ok") == 20 and "20 datasets" in listing
    assert " 200 " in listing and "goal-9-0" in listing
    histories = od.load_histories(tmp_path, "DarkRoom-10x10", "heldout", seed=0)
    assert [h.task.tolist() for h in histories] == task_split("DarkRoom-10x10")[1].tolist()

    before = data_file(tmp_path, (9, 0)).read_bytes()
    assert main(["DarkRoom-10x10", "--tasks", "heldout", "--root", root, "--no-progress"]) == 0
    assert "built 0 datasets" in capsys.readouterr().err
    assert main(["DarkRoom-10x10", "--tasks", "all", "--root", root, "--seed", "1", "--no-progress"]) == 2
    assert "was built with seed 0, not 1" in capsys.readouterr().err
    assert data_file(tmp_path, (9, 0)).read_bytes() == before  # nothing overwritten
    assert not (tmp_path / "DarkRoom-10x10" / "goal-2-0").exists()  # and nothing built after the refusal
    with pytest.raises(ConfigError, match="--tasks train"):
        od.load_histories(tmp_path, "DarkRoom-10x10", "train")


def test_histories_improve_from_random_to_near_optimal():
    env_id = "DarkRoom-10x10"
    tasks = task_split(env_id)[1][:4]
    histories = learning_histories(env_id, tasks, seed=0, progress=False)
    for h in histories:
        returns, best = h.episode_returns(), best_return(env_id, h.task)
        assert h.num_episodes == 200 and len(h.actions) == 200 * 100
        assert returns[:20].mean() < 0.3 * best
        assert returns[-20:].mean() > 0.85 * best
