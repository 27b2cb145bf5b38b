"""L2M's pre-trained model: a multi-task Decision Transformer with one token per action dimension (Schmied et al.
2023, "Learning to Modulate pre-trained Models in RL"; official code github ``ml-jku/L2M``,
``src/algos/models/multi_domain_discrete_dt_model.py``; ``../shared/papers/l2m.md``), and the agent that
pre-trains it on Meta-World demonstrations (``--agent=mtdt`` of ``runners.offline``).

Read top to bottom:

1. :class:`MultiTaskDT`. Per timestep the tokens (state, return-to-go, a_1 .. a_A, reward): the state zero-padded
   to a common width then ``Linear``; return-to-go and reward ``Linear(1, d)`` of the values divided by the
   domain's reward scale (Meta-World 200); every action dimension a token of one embedding table shared by the
   dimensions (64 min-max bins over [-1, 1], no offset: :data:`DT_TOKENIZER`; row 64 is the padding of empty
   timesteps); a timestep embedding added to every token of its step; one LayerNorm over all tokens; a GPT-2
   :class:`agents.transformer.CausalTransformer` without token positions (L2M's ``position_ids`` are all zero:
   a constant); one head ``Linear(d, 64)``. Action dimension j is read at the token before it: a_1 at the
   return-to-go token, a_j at a_(j-1)'s token, so the dimensions are predicted autoregressively; training feeds
   the data's tokens (teacher forcing) and rollouts decode one dimension at a time, greedily (a KV cache within
   the step).
   Context 5 timesteps (L2M: ``max_length: 5``); rollouts re-run the last ``context`` timesteps every step.
   States are standardised by the pre-training data's per-dimension mean and std (``mtdt.state_norm``, on by
   default), kept in the model's buffers so that fine-tuning and rollouts use the pre-training statistics; L2M
   feeds them raw (its trajectory buffer's ``store_state_stats`` is False; ``state_norm=false``). Why: at this
   size, with raw states (Meta-World positions vary by a few centimetres, std 0.01-0.2) the model learns to
   ignore them. Measured once on faucet-close-v3 alone (``python -m runners.offline --agent=mtdt --env=metaworld
   --total-updates=2000 --set env.metaworld_tasks=faucet-close-v3 --set run.eval_interval=500``, raw with
   ``--set mtdt.state_norm=false``; seed 1, 5 episodes): raw, the actions of three episodes of different
   variations were identical step for step, the cross-entropy rose only 1.85 -> 1.87 with the states shuffled
   across the batch but to 2.83 with the timesteps shuffled, and success stayed 0; standardised, the
   cross-entropy was 1.72 (3.22 with states shuffled) and success 0.6 at 2,000 updates (hammer-v3: 0.0 raw, 0.2
   standardised).
2. :class:`MultiTaskDTAgent` (``mtdt``): the action models' behaviour cloning (:class:`agents.action_model
   .ActionModelAgent`: AdamW, warm-up and cosine decay, clipping, cross-entropy over valid action dimensions,
   per-task evaluation) with this model and its tokens. It is the pre-training stage of L2M and of its
   continual-learning baselines.

The model accepts a :class:`agents.modulation.Modulation` and a :class:`agents.modulation.KeyPool`
(:meth:`MultiTaskDT.modulate`): the pool chooses each input's slot from the query (the masked mean of its embedded
state tokens), the modulation changes the frozen blocks accordingly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from agents.action_model import ActionModelAgent, ActionModelConfig, DomainWindows, MinMaxTokenizer
from agents.modulation import KeyPool, Modulation, PromptPool, masked_mean
from agents.transformer import CausalTransformer, TransformerConfig
from configs import ConfigError, param

N_BINS = 64  # L2M: action_channels 64 (min-max bins over [-1, 1])
DT_TOKENIZER = MinMaxTokenizer(bins=N_BINS, offset=0)
PAD = N_BINS  # the action token of padded timesteps (L2M: nn.Embedding(65, d, padding_idx=64))


class MultiTaskDT(nn.Module):
    """(state, rtg, a_1..a_A, reward) tokens per timestep -> logits of every action dimension (B, T, A, 64)."""
    state_mean: Tensor
    state_scale: Tensor

    def __init__(self, state_dim: int, act_dim: int, d_model: int, n_layer: int, n_head: int, context: int,
                 horizon: int, dropout: float = 0.1):
        super().__init__()
        self.state_dim, self.act_dim, self.context = state_dim, act_dim, context
        self.tokens_per_step = act_dim + 3
        self.embed_state = nn.Linear(state_dim, d_model)
        self.embed_rtg = nn.Linear(1, d_model)
        self.embed_action = nn.Embedding(N_BINS + 1, d_model, padding_idx=PAD)
        self.embed_reward = nn.Linear(1, d_model)
        self.embed_time = nn.Embedding(horizon + 1, d_model)
        self.embed_ln = nn.LayerNorm(d_model)
        self.backbone = CausalTransformer(TransformerConfig(
            n_layer=n_layer, d_model=d_model, n_head=n_head, max_tokens=context * self.tokens_per_step,
            embd_dropout=dropout, attn_dropout=dropout, resid_dropout=dropout, positions="none"))
        self.head = nn.Linear(d_model, N_BINS)
        #: states enter as (s - state_mean) / state_scale (:meth:`standardise_states`; identity until then)
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_scale", torch.ones(state_dim))
        self.modulation: Modulation | None = None
        self.pool: KeyPool | None = None
        self.prompt_pool: PromptPool | None = None

    def modulate(self, modulation: Modulation, pool: KeyPool | None = None) -> None:
        """Route the blocks through ``modulation``; with ``pool``, each input's slot is its selected key."""
        if pool is not None and len(pool.keys) != modulation.slots:
            raise ValueError(f"a pool of {len(pool.keys)} keys needs a modulation of as many slots, "
                             f"not {modulation.slots}")
        modulation.attach(self.backbone)
        self.modulation, self.pool = modulation, pool

    def standardise_states(self, states: np.ndarray, min_std: float = 1e-3) -> None:
        """Standardise state inputs by ``states``' (N, state_dim) per-dimension mean and std; dimensions that
        hardly vary there (std below ``min_std``: padding, objects absent from these tasks) are left as they are."""
        mean, std = states.mean(0), states.std(0)
        varies = std >= min_std
        self.state_mean.copy_(torch.as_tensor(np.where(varies, mean, 0.0)))
        self.state_scale.copy_(torch.as_tensor(np.where(varies, std, 1.0)))

    def prompt(self, prompts: PromptPool) -> None:
        """Run the blocks with ``prompts``' selected prompts in front of the tokens (L2P)."""
        prompts.attach(self.backbone)
        self.prompt_pool = prompts

    def embed(self, states: Tensor, rtg: Tensor, actions: Tensor, rewards: Tensor, timesteps: Tensor) -> Tensor:
        """(B, T, ...) -> (B, T, tokens_per_step, d) token embeddings, before the LayerNorm. ``actions``: tokens
        (B, T, A) with -100 (or :data:`PAD`) where there is none."""
        t = self.embed_time(timesteps)
        a = self.embed_action(torch.where(actions < 0, PAD, actions))
        states = (states - self.state_mean) / self.state_scale
        return torch.cat([(self.embed_state(states) + t)[:, :, None], (self.embed_rtg(rtg[..., None]) + t)[:, :, None],
                          a + t[:, :, None], (self.embed_reward(rewards[..., None]) + t)[:, :, None]], dim=2)

    def route(self, x: Tensor, mask: Tensor, slots: Tensor | None) -> None:
        """Choose each input's modulation slot and prompts for the next passes from embedded tokens x (B, T, K, d).
        With a pool, the slots come from it (:attr:`pull` keeps the mean cosine of the queries to their keys);
        ``slots`` (B,) chooses them instead (e.g. the task id)."""
        self.pull: Tensor | None = None
        if self.modulation is not None:
            if slots is None:
                if self.pool is None:
                    raise ValueError("a modulation without a pool needs the slot of every sample")
                chosen, self.pull = self.pool.select(masked_mean(x[:, :, 0], mask))
                slots = chosen[:, 0]
            self.modulation.select(slots)
        if self.prompt_pool is not None:
            self.pull = self.prompt_pool.select(masked_mean(x[:, :, 0], mask))

    def forward(self, states: Tensor, rtg: Tensor, rewards: Tensor, actions: Tensor, timesteps: Tensor,
                mask: Tensor, slots: Tensor | None = None, **_: Any) -> Tensor:
        """Training windows -> logits (B, T, A, 64), the slots and prompts chosen by :meth:`route`."""
        b, t = states.shape[:2]
        x = self.embed_ln(self.embed(states, rtg, actions, rewards, timesteps))  # (B, T, K, d)
        self.route(x, mask, slots)
        tokens = x.flatten(1, 2)
        h = self.backbone(tokens, mask[:, :, None].expand(b, t, self.tokens_per_step).flatten(1))
        # a_1 from the return-to-go token (index 1), a_j from a_(j-1) (index j): tokens 1 .. A of each step
        return self.head(h.unflatten(1, (t, self.tokens_per_step))[:, :, 1:1 + self.act_dim])

    @torch.no_grad()
    def act(self, states: Tensor, rtg: Tensor, rewards: Tensor, actions: Tensor, timesteps: Tensor,
            mask: Tensor, act_dim: int, slots: Tensor | None = None) -> Tensor:
        """Greedy action tokens (B, act_dim) of each window's last timestep, one dimension at a time, each fed back
        as the next one's input (L2M's ``get_action_pred``, which re-runs the window once per dimension). Here the
        window up to the last step's return-to-go token runs once into a KV cache and every decoded dimension is
        one new token: the same logits (the tokens after a_(j-1) cannot reach it through causal attention) at
        about 1/act_dim of the cost. Windows are right-aligned (the last column is the current step) and fully
        valid: rollouts step every environment together."""
        if not bool(mask.all()):
            raise ValueError("act() decodes fully valid windows (every environment at the same step)")
        b, t = states.shape[:2]
        actions = actions.clone()
        actions[:, -1] = PAD  # the current step's actions are decoded, not read
        x = self.embed_ln(self.embed(states, rtg, actions, rewards, timesteps))
        self.route(x, mask, slots)
        prefix = x.flatten(1, 2)[:, :(t - 1) * self.tokens_per_step + 2]  # ... s_t, rtg_t
        h, cache = self.backbone.step(prefix, self.backbone.init_cache(b))
        out = torch.empty(b, act_dim, dtype=torch.long, device=states.device)
        for j in range(act_dim):
            out[:, j] = self.head(h[:, -1]).argmax(-1)
            if j + 1 < act_dim:
                token = self.embed_ln(self.embed_action(out[:, j]) + self.embed_time(timesteps[:, -1]))
                h, cache = self.backbone.step(token[:, None], cache)
        return out


@dataclass
class MultiTaskDTConfig(ActionModelConfig):
    n_layer: int = param("Transformer blocks", min=1)
    n_head: int = param("Attention heads (must divide d_model)", min=1)
    dropout: float = param("Dropout on embeddings, attention and residual branches", min=0.0, max=1.0)
    state_norm: bool = param("Standardise states by the pre-training data's per-dimension mean and std (kept in "
                             "the model: fine-tuning and rollouts use the pre-training statistics)")


class MultiTaskDTAgent(ActionModelAgent):
    """Behaviour cloning of :class:`MultiTaskDT` on continuous-action domains (Meta-World)."""
    section: ClassVar[str] = "mtdt"
    config_class = MultiTaskDTConfig
    cfg: MultiTaskDTConfig
    WINDOW_TOKENIZER = DT_TOKENIZER
    policy: MultiTaskDT  # type: ignore[assignment]

    def build_policy(self) -> nn.Module:
        discrete = [d.name for d in self.envs.domains if d.discrete]
        if discrete:
            raise ConfigError(f"the {self.section} agent models continuous actions only (one token per dimension); "
                              f"{', '.join(discrete)} is discrete: use --datasets=metaworld")
        c = self.cfg
        if c.rollout_context != "window":
            raise ConfigError(f"{self.section}.rollout_context={c.rollout_context}: this model re-runs the last "
                              "`context` timesteps every step (window) and carries no state")
        horizon = max(self.envs.horizon(d) for d in self.envs.domains)
        model = MultiTaskDT(self.state_dim, self.max_act_dim, c.d_model, c.n_layer, c.n_head, c.context, horizon,
                            c.dropout)
        if c.state_norm:  # from the data of this (pre-)training; checkpoints carry them to resumes and fine-tuning
            flat = [tr.observations.reshape(len(tr.observations), -1) for trs in self.data_by_domain.values()
                    for tr in trs]
            model.standardise_states(np.concatenate([np.pad(f, ((0, 0), (0, self.state_dim - f.shape[1])))
                                                     for f in flat]))
        return model

    def slots_for(self, tasks: list[str]) -> Tensor | None:
        """The modulation slot of each input of ``tasks`` (None: no modulation, or its pool chooses)."""
        return None

    @torch.no_grad()
    def rollout(self, windows: DomainWindows, tasks: list[str], seed: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
        """One greedy episode per entry of ``tasks`` in lockstep, the last ``context`` timesteps re-run each step."""
        domain, policy, k, device = windows.domain, self.policy, self.policy.context, self.device
        slots = self.slots_for(tasks)
        env = self.envs.batch(domain, tasks, seed)
        try:
            n, a = len(tasks), self.max_act_dim
            obs = env.reset()
            target = torch.tensor([windows.best_return[t] for t in tasks], device=device) / domain.reward_scale
            hist = {"states": torch.zeros(n, 0, self.state_dim, device=device), "rtg": torch.zeros(n, 0, device=device),
                    "rewards": torch.zeros(n, 0, device=device),
                    "actions": torch.zeros(n, 0, a, dtype=torch.long, device=device),
                    "timesteps": torch.zeros(n, 0, dtype=torch.long, device=device)}
            returns = np.zeros(n)
            success, success_any = np.zeros(n, bool), np.zeros(n, bool)
            for t in range(env.horizon):
                if env.done.all():
                    break
                state = torch.zeros(n, 1, self.state_dim, device=device)
                flat = torch.as_tensor(obs.reshape(n, -1), dtype=torch.float32, device=device)
                state[:, 0, :flat.shape[1]] = flat
                step = {"states": state, "rtg": target[:, None], "rewards": torch.zeros(n, 1, device=device),
                        "actions": torch.full((n, 1, a), PAD, dtype=torch.long, device=device),
                        "timesteps": torch.full((n, 1), t, dtype=torch.long, device=device)}
                hist = {key: torch.cat([hist[key], step[key]], dim=1)[:, -k:] for key in hist}
                mask = torch.ones(hist["rtg"].shape, dtype=torch.bool, device=device)
                tokens = policy.act(**hist, mask=mask, act_dim=domain.act_dim, slots=slots)
                hist["actions"][:, -1, :domain.act_dim] = tokens
                obs, reward, success = env.step(DT_TOKENIZER.values(tokens).cpu().numpy())
                r = torch.as_tensor(reward, dtype=torch.float32, device=device) / domain.reward_scale
                hist["rewards"][:, -1] = r
                target = target - r
                returns += reward
                success_any |= success
        finally:
            env.close()
        return returns, success, success_any, {}
