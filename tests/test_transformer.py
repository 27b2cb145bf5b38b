"""The causal transformer, its KV cache, attention recording, the Decision Transformer; attention metrics."""
import math

import pytest
import torch

from agents.transformer import (
    CausalTransformer,
    DecisionTransformer,
    TransformerConfig,
    loss,
    record_attention,
)
from plasticity import metrics as M
from plasticity.hooks import ActivationCapture

D = 16


def tiny(cross=False, positions="learned", max_tokens=24, n_layer=2):
    torch.manual_seed(0)
    cfg = TransformerConfig(n_layer=n_layer, d_model=D, n_head=4, max_tokens=max_tokens,
                            cross_attention=cross, positions=positions)
    return CausalTransformer(cfg).eval()


def memory_for(b=3, m=5):
    memory = torch.randn(b, m, D)
    mask = torch.ones(b, m, dtype=torch.bool)
    mask[1, 3:] = False   # partly padded
    mask[2] = False       # nothing retrieved
    return memory, mask


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "none"])
@pytest.mark.parametrize("cross", [False, True])
def test_cached_steps_equal_the_full_forward(cross, positions):
    model = tiny(cross, positions)
    x = torch.randn(3, 10, D)
    memory, mask = memory_for() if cross else (None, None)
    full = model(x, memory=memory, memory_mask=mask)
    cache = model.init_cache(3, memory, mask)
    outs = []
    for t in range(10):
        out, cache = model.step(x[:, t:t + 1], cache)
        outs.append(out)
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)
    # groups of tokens at once (a DT step appends 1-2 tokens) give the same
    cache = model.init_cache(3, memory, mask)
    outs = []
    for a, b in ((0, 2), (2, 3), (3, 7), (7, 10)):
        out, cache = model.step(x[:, a:b], cache)
        outs.append(out)
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)


def test_an_empty_memory_row_adds_nothing():
    model = tiny(cross=True)
    x = torch.randn(3, 6, D)
    memory, mask = memory_for()
    with_memory = model(x, memory=memory, memory_mask=mask)
    without = model(x)
    assert torch.allclose(with_memory[2], without[2], atol=1e-6)
    assert not torch.allclose(with_memory[0], without[0], atol=1e-4)


def test_padding_is_ignored_on_either_side():
    model = tiny()
    x = torch.randn(2, 8, D)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, :3] = False   # left padding
    mask[1, 6:] = False   # right padding
    out = model(x, mask)
    assert torch.allclose(out[0, 3:], model(x[:1, 3:])[0], atol=1e-5)
    assert torch.allclose(out[1, :6], model(x[1:, :6])[0], atol=1e-5)


def test_caches_are_values_branches_do_not_interact():
    model = tiny()
    x = torch.randn(2, 4, D)
    _, cache = model.step(x[:, :3], model.init_cache(2))
    keys_before = [k.clone() for k in cache.keys]
    a, cache_a = model.step(x[:, 3:4], cache)
    b, cache_b = model.step(torch.randn(2, 1, D), cache)
    a2, _ = model.step(x[:, 3:4], cache)
    assert torch.equal(a, a2)
    assert all(torch.equal(k, kb) for k, kb in zip(cache.keys, keys_before))
    assert cache.lengths.tolist() == [3, 3] and cache_a.lengths.tolist() == [4, 4]
    assert not torch.equal(cache_a.keys[1], cache_b.keys[1])


def test_overflow_raises_and_trim_recomputes_the_window():
    model = tiny(max_tokens=6)
    x = torch.randn(2, 9, D)
    _, cache = model.step(x[:, :6], model.init_cache(2))
    with pytest.raises(ValueError, match="max_tokens"):
        model.step(x[:, 6:7], cache)
    cache = model.trim(cache, keep=3)   # keep tokens 3..5, positions from 0
    out, cache = model.step(x[:, 6:9], cache)
    assert torch.allclose(out, model(x[:, 3:9])[:, 3:], atol=1e-5)


def test_per_env_reset_and_trim_leave_the_other_envs_alone():
    model = tiny(cross=True, max_tokens=8)
    x = torch.randn(3, 12, D)
    memory, mask = memory_for()
    _, cache = model.step(x[:, :5], model.init_cache(3, memory, mask))
    cache = model.reset(cache, torch.tensor([False, True, False]))
    out, cache = model.step(x[:, 5:7], cache)
    assert torch.allclose(out[1], model(x[1:2, 5:7], memory=memory[1:2], memory_mask=mask[1:2])[0], atol=1e-5)
    full = model(x[:, :7], memory=memory, memory_mask=mask)
    assert torch.allclose(out[[0, 2]], full[[0, 2], 5:7], atol=1e-5)
    # env 0 and 2 hold 7 tokens, env 1 holds 2: trim only the full ones to 4, then step 1
    cache = model.trim(cache, keep=4, envs=cache.lengths + 1 > 7)
    assert cache.lengths.tolist() == [4, 2, 4]
    out, cache = model.step(x[:, 7:8], cache)
    window = model(x[:, 3:8], memory=memory, memory_mask=mask)[:, -1]
    env1 = model(x[1:2, 5:8], memory=memory[1:2], memory_mask=mask[1:2])[0, -1]
    assert torch.allclose(out[[0, 2], 0], window[[0, 2]], atol=1e-5)
    assert torch.allclose(out[1, 0], env1, atol=1e-5)


def test_set_memory_with_recompute_equals_the_forward_with_the_new_memory():
    model = tiny(cross=True)
    x = torch.randn(3, 5, D)
    memory, mask = memory_for()
    _, cache = model.step(x[:, :4], model.init_cache(3, memory, mask))
    new_memory = torch.randn(3, 4, D)
    cache = model.set_memory(cache, new_memory, recompute=True)
    out, _ = model.step(x[:, 4:5], cache)
    assert torch.allclose(out[:, 0], model(x, memory=new_memory)[:, -1], atol=1e-5)


def test_recorded_attention_gives_the_sdpa_outputs_and_proper_probabilities():
    model = tiny(cross=True)
    x = torch.randn(3, 7, D)
    memory, mask = memory_for()
    expected = model(x, memory=memory, memory_mask=mask)
    with record_attention(model) as rec:
        out = model(x, memory=memory, memory_mask=mask)
    assert torch.allclose(out, expected, atol=1e-6)
    assert set(rec.maps) == {"blocks.0.attn", "blocks.1.attn", "blocks.0.cross", "blocks.1.cross"}
    probs = rec.maps["blocks.0.attn"]
    assert probs.shape == (3, 4, 7, 7)
    assert torch.allclose(probs.sum(-1), torch.ones(3, 4, 7), atol=1e-6)
    assert torch.equal(probs.triu(1), torch.zeros_like(probs))          # causal
    cross = rec.maps["blocks.1.cross"]
    assert cross.shape == (3, 4, 7, 5)
    assert torch.equal(cross[1, ..., 3:], torch.zeros_like(cross[1, ..., 3:]))  # padded memory
    assert torch.equal(cross[2], torch.zeros_like(cross[2]))                   # no memory
    assert all(m.record is None for m in model.modules() if hasattr(m, "record"))
    assert M.attention_entropy(probs).shape == (4,)


def test_mlp_activations_are_hooked_token_sequences():
    model = tiny()
    with ActivationCapture(model) as cap:
        model(torch.randn(2, 5, D))
    assert set(cap.records) == {"blocks.0.mlp.fc", "blocks.1.mlp.fc"}
    kind, pre, post = cap.records["blocks.0.mlp.fc"]
    assert kind == "gelu" and post.shape == (2 * 5, 4 * D)  # tokens flattened to samples (plasticity.hooks)


# ---------------------------------------------------------------------------------------
# Decision Transformer
# ---------------------------------------------------------------------------------------

DS, A = 3, 4


def episode(b, t, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(states=torch.randn(b, t, DS, generator=g), actions=torch.randint(0, A, (b, t), generator=g),
                rewards=torch.rand(b, t, generator=g), rtg=torch.rand(b, t, generator=g) * 10,
                timesteps=torch.arange(t).expand(b, t))


def tiny_dt(kinds, cross=False, context=4):
    torch.manual_seed(0)
    return DecisionTransformer(DS, A, kinds=kinds, context=context, n_layer=2, d_model=D, n_head=2,
                               max_timestep=50, cross_attention=cross, memory_len=6).eval()


@pytest.mark.parametrize("kinds,cross", [(("rtg", "state", "action"), False),
                                         (("state", "action", "reward"), False),
                                         (("rtg", "state", "action"), True)])
def test_rollout_steps_equal_the_forward_on_the_last_context_window(kinds, cross):
    model = tiny_dt(kinds, cross, context=4)
    b, t = 2, 7   # beyond the context: the window slides by recomputation
    ep = episode(b, t)
    memory = memory_mask = None
    if cross:
        mem = episode(b, 5, seed=2)
        memory, memory_mask = model.embed_memory(**mem)
        assert memory.shape == (b, 15, D) and memory_mask.shape == (b, 15)
    use_rtg = "rtg" in kinds
    use_r = "reward" in kinds
    rollout = model.start(b, memory, memory_mask)
    for step in range(t):
        logits, rollout = model.act(rollout, ep["states"][:, step], ep["timesteps"][:, step],
                                    ep["rtg"][:, step] if use_rtg else None)
        lo = max(0, step - 3)
        window = {k: v[:, lo:step + 1] for k, v in ep.items()}
        full = model(window["states"], window["actions"], window["rewards"] if use_r else None,
                     window["rtg"] if use_rtg else None, window["timesteps"], memory=memory, memory_mask=memory_mask)
        assert logits.shape == (b, A)
        assert torch.allclose(logits, full[:, -1], atol=1e-5), step
        rollout = model.observe(rollout, ep["actions"][:, step], ep["rewards"][:, step] if use_r else None)


def test_rollout_reset_of_one_env_starts_its_context_afresh():
    kinds = ("rtg", "state", "action")
    model = tiny_dt(kinds)
    ep = episode(2, 5)
    rollout = model.start(2)
    for step in range(3):
        _, rollout = model.act(rollout, ep["states"][:, step], ep["timesteps"][:, step], ep["rtg"][:, step])
        rollout = model.observe(rollout, ep["actions"][:, step])
    rollout = model.reset_envs(rollout, torch.tensor([True, False]))
    logits, rollout = model.act(rollout, ep["states"][:, 3], ep["timesteps"][:, 3], ep["rtg"][:, 3])
    one = model(ep["states"][:1, 3:4], ep["actions"][:1, 3:4], None, ep["rtg"][:1, 3:4], ep["timesteps"][:1, 3:4])
    both = model(ep["states"][:, :4], ep["actions"][:, :4], None, ep["rtg"][:, :4], ep["timesteps"][:, :4])
    assert torch.allclose(logits[0], one[0, -1], atol=1e-5)
    assert torch.allclose(logits[1], both[1, -1], atol=1e-5)
    with pytest.raises(RuntimeError):
        model.act(rollout, ep["states"][:, 4], ep["timesteps"][:, 4], ep["rtg"][:, 4])


def test_action_logits_do_not_see_the_action_they_predict():
    model = tiny_dt(("rtg", "state", "action"))
    ep = episode(2, 4)
    logits = model(ep["states"], ep["actions"], None, ep["rtg"], ep["timesteps"])
    changed = ep["actions"].clone()
    changed[:, -1] = (changed[:, -1] + 1) % A
    logits2 = model(ep["states"], changed, None, ep["rtg"], ep["timesteps"])
    assert logits.shape == (2, 4, A)
    assert torch.allclose(logits, logits2)


def test_chunked_memory_embedding_and_training_step():
    model = tiny_dt(("rtg", "state", "action"), cross=True).train()
    mem = episode(2, 3, seed=3)
    mem = {k: torch.stack([v, v], 1) for k, v in mem.items()}   # 2 chunks of 3 steps
    mask = torch.ones(2, 2, 3, dtype=torch.bool)
    mask[0, 1] = False
    memory, memory_mask = model.embed_memory(**mem, mask=mask)
    assert memory.shape == (2, 18, D) and memory_mask.shape == (2, 18)
    assert memory_mask[0].tolist() == [True] * 9 + [False] * 9
    ep = episode(2, 4)
    logits = model(ep["states"], ep["actions"], None, ep["rtg"], ep["timesteps"], torch.ones(2, 4, dtype=torch.bool),
                   memory, memory_mask)
    loss(logits, ep["actions"]).backward()
    assert model.memory_embed.state.weight.grad is not None
    assert model.embed.state.weight.grad is not None


def test_loss_is_the_mean_cross_entropy_over_valid_steps():
    logits = torch.zeros(1, 3, 2)
    logits[0, 0] = torch.tensor([math.log(3.0), 0.0])   # p(action 0) = 3/4
    actions = torch.tensor([[0, 1, 1]])
    mask = torch.tensor([[True, True, False]])
    expected = (-math.log(0.75) + math.log(2.0)) / 2
    assert float(loss(logits, actions, mask)) == pytest.approx(expected, rel=1e-6)
    assert float(loss(logits, actions)) == pytest.approx((-math.log(0.75) + 2 * math.log(2.0)) / 3, rel=1e-6)


# ---------------------------------------------------------------------------------------
# Attention metrics, hand-computed
# ---------------------------------------------------------------------------------------

def test_attention_entropy_and_sink_share_by_hand():
    probs = torch.zeros(1, 2, 2, 4)
    probs[0, 0, 0] = torch.tensor([1.0, 0, 0, 0])          # head 0: one-hot, then uniform over 2
    probs[0, 0, 1] = torch.tensor([0.5, 0.5, 0, 0])
    probs[0, 1, 0] = torch.tensor([0.25, 0.25, 0.25, 0.25])  # head 1: uniform, then on key 3
    probs[0, 1, 1] = torch.tensor([0.0, 0, 0, 1.0])
    ent = M.attention_entropy(probs)
    assert ent.tolist() == pytest.approx([math.log(2) / 2, math.log(4) / 2])
    assert M.attention_sink_share(probs).tolist() == pytest.approx([0.75, 0.125])
    mask = torch.tensor([[False, True]])                    # only the second query counts
    assert M.attention_entropy(probs, mask).tolist() == pytest.approx([math.log(2), 0.0])
    assert M.attention_sink_share(probs, mask).tolist() == pytest.approx([0.5, 0.0])


def test_attention_dropout_is_set_apart_from_the_other_dropouts():
    same = DecisionTransformer(4, 3, n_layer=1, d_model=16, n_head=2, dropout=0.2)
    apart = DecisionTransformer(4, 3, n_layer=1, d_model=16, n_head=2, dropout=0.2, attn_dropout=0.0)
    assert (same.cfg.attn_dropout, same.cfg.resid_dropout, same.cfg.embd_dropout) == (0.2, 0.2, 0.2)
    assert (apart.cfg.attn_dropout, apart.cfg.resid_dropout, apart.cfg.embd_dropout) == (0.0, 0.2, 0.2)
    assert apart.transformer.blocks[0].attn.attn_dropout == 0.0
