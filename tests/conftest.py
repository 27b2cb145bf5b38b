"""Fixtures shared by several test files."""
import pytest


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory):
    """A tiny pre-trained mtdt run on reach-v3 (2 demonstrations, 4 updates, states standardised): the continual
    methods' start.
    Returns (its results root, its run directory, its datasets root)."""
    pytest.importorskip("metaworld")
    from runners.cli import main
    from runners.offline import translate
    root = tmp_path_factory.mktemp("pretrained")
    data = root / "data"
    assert main("offline", translate([
        "--agent=mtdt", "--datasets=metaworld", "--total-updates=4", f"--results-dir={root}", "--run-name=pre",
        "--no-progress", "--set", "env.metaworld_tasks=reach-v3", "--set", f"dataset.root={data}",
        "--set", "dataset.metaworld_episodes=2", "--set", "run.eval_interval=0",
        "--set", "mtdt.updates_per_iteration=2", "--set", "mtdt.d_model=16", "--set", "mtdt.batch_size=2",
        "--set", "mtdt.state_norm=true", "--set", "diagnostics.enabled=false"])) == 0
    return root, root / "offline" / "pre", data
