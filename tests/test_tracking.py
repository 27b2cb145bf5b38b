"""--track: every scalar of metrics.csv reaches the W&B run (read back from its offline file), with the resolved
config; a resumed run continues the same W&B run; no wandb means one line and exit 2."""
import json
import struct
import sys
from pathlib import Path

import pytest

from runners.cli import main as train
from runners.storage import read_metrics
from runners.tracking import resolve_mode

pytest.importorskip("wandb")

TINY = ["--agent", "ppo", "--set", "env.num_envs=4", "--set", "ppo.num_steps=64", "--no-progress", "--track",
        "--set", "tracking.mode=offline", "--wandb-project", "tests"]


def wandb_records(path: Path) -> list:
    """The records of a .wandb file: W&B's 7-byte header, then LevelDB-log framing (32 KiB blocks of chunks with a
    crc32c, a length and a type: 1 full, 2 first, 3 middle, 4 last), each record a protobuf ``Record``."""
    from wandb.proto import wandb_internal_pb2 as pb
    raw, pos, block, chunks, out = path.read_bytes(), 7, 32768, b"", []
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        pos += 7
        if length == 0 and kind == 0:  # zero padding to the end of a block
            pos += left - 7
            continue
        chunks += raw[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            out.append(record)
            chunks = b""
    return out


def history_and_config(run_dir: Path) -> tuple[dict[int, dict], dict]:
    history, config = {}, {}
    for file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = record.history.item
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
                history.setdefault(int(row["_step"]), row)
            elif kind == "run":
                config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    return history, config


def test_every_logged_scalar_reaches_the_offline_wandb_run_with_the_resolved_config(tmp_path):
    assert train("classic", [*TINY, "--total-steps", "768", "--results-dir", str(tmp_path), "--run-name", "t"]) == 0
    run_dir = tmp_path / "classic" / "t"
    history, config = history_and_config(run_dir)
    metrics = read_metrics(run_dir / "metrics.csv")
    assert sorted(history) == [int(s) for s in metrics["step"]]
    for i, step in enumerate(metrics["step"]):
        for key, values in metrics.items():
            if key != "step" and values[i] == values[i]:  # NaN cells are not logged
                assert history[int(step)][key] == pytest.approx(values[i], rel=1e-6), (key, step)
    assert config["ppo"]["clip_eps"] == 0.2 and config["env"]["id"] == "CartPole-v1"
    assert config["tracking"]["project"] == "tests"


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path):
    assert train("classic", [*TINY, "--total-steps", "512", "--results-dir", str(tmp_path), "--run-name", "t"]) == 0
    run_dir = tmp_path / "classic" / "t"
    run_id = (run_dir / "wandb_id").read_text().strip()
    assert train("classic", ["--resume", str(run_dir), "--total-steps", "1024", "--no-progress"]) == 0
    assert (run_dir / "wandb_id").read_text().strip() == run_id
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)
    history, _ = history_and_config(run_dir)
    assert max(history) == int(read_metrics(run_dir / "metrics.csv")["step"][-1]) == 1024


def test_track_without_wandb_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    assert train("classic", [*TINY, "--total-steps", "256", "--results-dir", str(tmp_path), "--run-name", "t"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --track (tracking.track=true) needs the 'wandb' package: pip install -e '.[wandb]'"]
    assert not (tmp_path / "classic" / "t").exists()


def test_auto_mode_is_offline_without_a_key_and_follows_wandb_mode(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr("runners.tracking.has_api_key", lambda: False)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_mode("auto") == "online"
    assert resolve_mode("offline") == "offline"
