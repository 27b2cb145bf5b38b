"""The plasticity monitor on a tiny Decision Transformer: token-level unit stats and ranks, attention
entropy and sink share per head (padding left out), churn, and update tracking with AdamW."""
import pytest
import torch
from torch import nn

from agents.transformer import DecisionTransformer, loss, record_attention, token_mask
from plasticity import metrics as M
from plasticity.hooks import ActivationCapture, run_network
from plasticity.monitor import DiagnosticsConfig, PlasticityMonitor

B, T, K = 6, 5, 3  # sequences, timesteps, tokens per timestep (rtg, state, action)
CFG = dict(probe_size=B, kernel_samples=8, batch_samples=3, interval=1)


def tiny_dt(cross: bool = False) -> DecisionTransformer:
    torch.manual_seed(0)
    return DecisionTransformer(state_dim=4, n_actions=3, context=T, n_layer=2, d_model=16, n_head=2,
                               max_timestep=20, dropout=0.0, cross_attention=cross, memory_len=4)


def probe_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :2] = False  # left padding: the first two steps of sequence 0
    mask[3, :1] = False
    return {"states": torch.randn(B, T, 4, generator=g), "actions": torch.randint(0, 3, (B, T), generator=g),
            "rewards": torch.randn(B, T, generator=g), "rtg": torch.randn(B, T, generator=g),
            "timesteps": torch.arange(T).repeat(B, 1), "mask": mask}


def monitor(model: nn.Module, probe, optimizers=(), **overrides) -> PlasticityMonitor:
    return PlasticityMonitor({"policy": model}, list(optimizers), DiagnosticsConfig.defaults(**{**CFG, **overrides}),
                             probe=probe)


def test_unit_stats_and_ranks_are_those_of_the_token_features():
    model, probe = tiny_dt(), probe_batch()
    out = monitor(model, probe).collect()
    with ActivationCapture(model) as cap:
        run_network(model, probe)
    for layer in ("transformer.blocks.0.mlp.fc", "transformer.blocks.1.mlp.fc"):
        kind, pre, post = cap.records[layer]
        assert kind == "gelu" and post.shape == (B * T * K, 4 * 16)  # every token a sample, 64 units
        assert out[f"plasticity/dead_frac/policy/{layer}"] == pytest.approx(
            float(M.dead_mask(post, kind, 1e-3).float().mean()))
        assert out[f"plasticity/dormant_frac/policy/{layer}"] == pytest.approx(M.dormant_fraction(post, 0.025))
        assert out[f"plasticity/feature_norm/policy/{layer}"] == pytest.approx(M.feature_norm(pre))
        ranks = M.rank_metrics(post, 0.01)
        assert ranks  # 90 tokens >= 64 units
        for name, value in ranks.items():
            assert out[f"plasticity/{name}/policy/{layer}"] == pytest.approx(float(value))
    assert "plasticity/weight_norm/policy/transformer.blocks.0.attn.qkv" in out


def test_attention_entropy_and_sink_per_head_leave_padding_out():
    model, probe = tiny_dt(), probe_batch()
    out = monitor(model, probe).collect()
    with record_attention(model) as rec:
        run_network(model, probe)
    queries = token_mask(probe["mask"], K)  # (B, 15)
    first = (~queries).sum(1)  # left padding: the first valid token of each sequence
    for i in range(2):
        probs = rec.maps[f"blocks.{i}.attn"]
        assert probs.shape == (B, 2, T * K, T * K)
        name = f"policy/transformer.blocks.{i}.attn"
        entropy = M.attention_entropy(probs, queries)
        # the sink by hand: attention on each sequence's first valid key, over its valid queries
        sink = torch.stack([torch.cat([probs[b, h, queries[b], first[b]] for b in range(B)]).mean()
                            for h in range(2)])
        assert torch.allclose(M.attention_sink_share(probs, queries, queries), sink, atol=1e-6)
        for h in range(2):
            assert out[f"plasticity/attn_entropy/{name}/h{h}"] == pytest.approx(float(entropy[h]))
            assert out[f"plasticity/attn_sink/{name}/h{h}"] == pytest.approx(float(sink[h]), abs=1e-6)
        assert out[f"plasticity/attn_entropy/{name}"] == pytest.approx(float(entropy.mean()))
        assert out[f"plasticity/attn_sink/{name}"] == pytest.approx(float(sink.mean()), abs=1e-6)
        assert "plasticity/attn_entropy/policy/transformer.blocks.0.attn/h2" not in out
        # padding queries would count otherwise: the masked metric differs from the unmasked one
        assert not torch.allclose(entropy, M.attention_entropy(probs))


def test_recorded_forward_keeps_the_outputs_so_churn_is_unchanged():
    model, probe = tiny_dt(), probe_batch()
    mon = monitor(model, probe)
    expected = run_network(model, probe)  # the SDPA path
    _, current = mon.layer_metrics(probe, "plasticity")
    assert torch.allclose(current["output/policy"], expected, atol=1e-5)
    mon.collect()
    second = mon.collect()
    assert second["plasticity/churn/policy"] == pytest.approx(0.0, abs=1e-7)
    assert second["plasticity/greedy_churn/policy"] == 0.0
    assert all(m.record is None for m in model.modules() if hasattr(m, "record"))  # recording switched off


def test_cross_attention_counts_only_queries_with_memory_and_the_sink_is_the_first_kept_memory_token():
    model, probe = tiny_dt(cross=True), probe_batch()
    g = torch.Generator().manual_seed(2)
    memory_mask = torch.ones(B, 4 * K, dtype=torch.bool)
    memory_mask[1, :3] = False  # the memory of sequence 1 starts at token 3
    memory_mask[2] = False  # sequence 2: nothing retrieved yet (its cross-attention adds 0)
    probe = {**probe, "memory": torch.randn(B, 4 * K, 16, generator=g), "memory_mask": memory_mask}
    out = monitor(model, probe).collect()
    with record_attention(model) as rec:
        run_network(model, probe)
    probs = rec.maps["blocks.0.cross"]
    queries = token_mask(probe["mask"], K) & memory_mask.any(1, keepdim=True)
    assert out["plasticity/attn_entropy/policy/transformer.blocks.0.cross/h1"] == pytest.approx(
        float(M.attention_entropy(probs, queries)[1]))
    sink = M.attention_sink_share(probs, queries, memory_mask)
    assert out["plasticity/attn_sink/policy/transformer.blocks.0.cross/h0"] == pytest.approx(float(sink[0]))
    assert float(probs[1, 0, 5, 3]) > 0 and float(probs[1, 0, 5, 0]) == 0.0  # key 0 would read 0 there


def test_networks_without_attention_get_no_attention_metrics():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    out = monitor(net, torch.randn(16, 4), probe_size=16).collect()
    assert "plasticity/dead_frac/policy/0" in out
    assert not any("attn_" in k for k in out)


def test_update_norms_and_elr_with_adamw_on_the_transformer():
    model, probe = tiny_dt(), probe_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    mon = monitor(model, probe, [opt])
    first = mon.collect()
    layer = "transformer.blocks.0.attn.qkv"
    assert f"plasticity/update_norm/policy/{layer}" not in first
    before = [p.detach().clone() for p in model.transformer.blocks[0].attn.qkv.parameters()]
    mon.track_updates(True)
    opt.zero_grad()
    loss(model(**probe), probe["actions"], probe["mask"]).backward()
    opt.step()
    out = mon.collect()
    params = list(model.transformer.blocks[0].attn.qkv.parameters())
    delta = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, params)]).norm().item()
    weight = torch.cat([p.detach().flatten() for p in params]).norm().item()
    assert out[f"plasticity/update_norm/policy/{layer}"] == pytest.approx(delta, rel=1e-4)
    assert out[f"plasticity/update_ratio/policy/{layer}"] == pytest.approx(
        delta / torch.cat([b.flatten() for b in before]).norm().item(), rel=1e-4)
    assert out[f"plasticity/grad_norm/policy/{layer}"] > 0
    assert out[f"plasticity/elr/policy/{layer}"] == pytest.approx(1e-3 / weight)  # adaptive: lr / ||w||
    assert out["plasticity/churn/policy"] > 0  # the step moved the outputs


def test_batch_metrics_take_evenly_spaced_sequences_of_a_named_batch():
    model, probe = tiny_dt(), probe_batch()
    mon = monitor(model, None)
    out = mon.batch_metrics(probe, "start")  # 6 sequences, at most 3: 0, 2, 5
    kept = {k: v[[0, 2, 5]] for k, v in probe.items()}
    expected, _ = mon.layer_metrics(kept, "batch_start", compare=False)
    assert out == pytest.approx(expected)
    assert "batch_start/attn_entropy/policy/transformer.blocks.1.attn" in out


def test_sink_share_on_the_first_valid_key_by_hand():
    probs = torch.tensor([[[[1.0, 0.0, 0.0], [0.0, 0.25, 0.75], [0.0, 0.5, 0.5]]]])  # (1, 1, 3, 3), key 0 padding
    keys = torch.tensor([[False, True, True]])
    queries = keys
    assert M.attention_sink_share(probs, queries).tolist() == pytest.approx([0.0])
    assert M.attention_sink_share(probs, queries, keys).tolist() == pytest.approx([0.375])
