"""L2M's multi-task Decision Transformer (agents/l2m.py): its tokens are autoregressive over action dimensions,
greedy decoding agrees with the training pass, modulations attach to it, the pre-training agent runs."""
import json

import numpy as np
import pytest
import torch

from agents.l2m import DT_TOKENIZER, PAD, MultiTaskDT
from agents.modulation import KeyPool, LoRA

S, A, D, T = 5, 3, 16, 4


def model() -> MultiTaskDT:
    torch.manual_seed(0)
    return MultiTaskDT(S, A, D, n_layer=2, n_head=2, context=T, horizon=50, dropout=0.0).eval()


def batch(b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"states": torch.randn(b, T, S, generator=g), "rtg": torch.rand(b, T, generator=g),
            "rewards": torch.rand(b, T, generator=g), "actions": torch.randint(0, 64, (b, T, A), generator=g),
            "timesteps": torch.arange(T).repeat(b, 1), "mask": torch.ones(b, T, dtype=torch.bool)}


@torch.no_grad()
def test_action_dimension_j_sees_the_dimensions_before_it_and_not_its_own():
    net, x = model(), batch()
    logits = net(**x)
    assert logits.shape == (2, T, A, 64)
    changed = {**x, "actions": x["actions"].clone()}
    changed["actions"][:, -1, 1] = (changed["actions"][:, -1, 1] + 7) % 64  # dimension 1 of the last step
    after = net(**changed)
    torch.testing.assert_close(after[:, :, :2], logits[:, :, :2])  # dims 0 and 1 cannot see it
    assert not torch.allclose(after[:, -1, 2], logits[:, -1, 2])  # dim 2 is read at dim 1's token


@torch.no_grad()
def test_greedy_decoding_is_a_fixed_point_of_the_training_pass():
    net, x = model(), batch()
    tokens = net.act(**x, act_dim=A)
    fed = {**x, "actions": x["actions"].clone()}
    fed["actions"][:, -1] = tokens
    torch.testing.assert_close(net(**fed)[:, -1].argmax(-1), tokens)
    values = DT_TOKENIZER.values(tokens)
    assert float(values.min()) >= -1.0 and float(values.max()) <= 1.0 - 2 / 64  # left bin edges
    assert DT_TOKENIZER.tokens(torch.tensor([-1.0, 0.0, 0.999])).tolist() == [0, 32, 63]


@torch.no_grad()
def test_padding_tokens_and_a_fresh_pooled_lora_change_nothing():
    net, x = model(), batch()
    x["actions"][:, -1] = -100  # the training windows' "no action" marker embeds as the padding row
    before = net(**x)
    assert torch.equal(net.embed_action.weight[PAD], torch.zeros(D))
    pool = KeyPool(3, D)
    net.modulate(LoRA(3, 2, D, rank=2), pool)
    pool.eval()
    torch.testing.assert_close(net(**x), before, atol=1e-6, rtol=0)
    assert net.pull is not None and -1.0 <= float(net.pull) <= 1.0
    with pytest.raises(ValueError, match="3 keys"):
        model().modulate(LoRA(2, 2, D, rank=2), KeyPool(3, D))


@torch.no_grad()
def test_standardised_states_enter_the_model_as_z_scores_and_constant_dimensions_raw():
    net, x = model(), batch()
    data = np.array([[1.0, 0.0, 5.0, 0.2, 0.0], [3.0, 0.0, 5.0, 0.4, 0.0], [5.0, 0.0, 5.0, 0.6, 0.0]])
    net.standardise_states(data)
    std0, std3 = np.sqrt(8 / 3), np.sqrt(0.08 / 3)  # population std of (1, 3, 5) and (0.2, 0.4, 0.6)
    torch.testing.assert_close(net.state_mean, torch.tensor([3.0, 0.0, 0.0, 0.4, 0.0]))
    torch.testing.assert_close(net.state_scale, torch.tensor([std0, 1.0, 1.0, std3, 1.0], dtype=torch.float32))
    standardised = net(**x)
    raw = model()  # the same weights, states standardised by hand
    z = x["states"].clone()
    z[..., 0], z[..., 3] = (z[..., 0] - 3.0) / std0, (z[..., 3] - 0.4) / std3
    torch.testing.assert_close(standardised, raw(**{**x, "states": z}))
    assert {"state_mean", "state_scale"} <= set(net.state_dict())  # buffers: carried by every checkpoint


def test_the_pretraining_agent_runs_and_refuses_discrete_domains(tmp_path, capsys):
    pytest.importorskip("metaworld")
    from runners.cli import main
    from runners.offline import translate
    args = ["--agent=mtdt", "--datasets=metaworld", "--total-updates=4", f"--results-dir={tmp_path}", "--no-progress",
            "--set", "env.metaworld_tasks=reach-v3", "--set", f"dataset.root={tmp_path / 'datasets'}",
            "--set", "dataset.metaworld_episodes=2", "--set", "run.eval_interval=4", "--set", "run.eval_episodes=1",
            "--set", "mtdt.updates_per_iteration=2", "--set", "mtdt.d_model=16", "--set", "mtdt.batch_size=2",
            "--set", "diagnostics.interval=1"]
    assert main("offline", translate(args)) == 0
    (run_dir,) = (tmp_path / "offline").iterdir()
    evaluation = json.loads((run_dir / "eval.json").read_text())["evaluations"][-1]
    assert set(evaluation["metaworld"]) == {"reach-v3"} and 0 <= evaluation["metaworld"]["reach-v3"]["success"] <= 1
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "losses/action_ce/metaworld" in header and "plasticity/srank/policy/backbone.blocks.0.mlp.fc" in header
    capsys.readouterr()
    assert main("offline", translate([a.replace("--datasets=metaworld", "--datasets=metaworld,darkroom")
                                      for a in args] + ["--run-name=discrete"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "continuous actions only" in err and not np.any([
        p.name == "discrete" for p in (tmp_path / "offline").iterdir()])


def full_window_decoding(net: MultiTaskDT, x: dict[str, torch.Tensor], slots=None) -> torch.Tensor:
    """L2M's get_action_pred: the whole window re-run once per action dimension."""
    actions = x["actions"].clone()
    actions[:, -1] = PAD
    for j in range(A):
        logits = net(**{**x, "actions": actions}, slots=slots)
        actions[:, -1, j] = logits[:, -1, j].argmax(-1)
    return actions[:, -1]


@torch.no_grad()
@pytest.mark.parametrize("kind", ["plain", "pooled lora", "prompts"])
def test_cached_decoding_equals_rerunning_the_window_per_dimension(kind):
    from agents.modulation import PromptPool
    net, x = model(), batch(b=6)
    if kind == "pooled lora":
        pool = KeyPool(3, D)
        net.modulate(LoRA(3, 2, D, rank=2), pool)
        pool.eval()
    elif kind == "prompts":
        prompts = PromptPool(pool_size=4, n_layer=2, length=2, d_model=D, top_k=2)
        net.prompt(prompts)
        prompts.pool.eval()
    for p in net.parameters():  # every weight non-trivial (a fresh LoRA's B is 0)
        p.add_(0.3 * torch.randn_like(p))
    torch.testing.assert_close(net.act(**x, act_dim=A), full_window_decoding(net, x))
    x["mask"][0, 0] = False
    with pytest.raises(ValueError, match="fully valid"):
        net.act(**x, act_dim=A)
