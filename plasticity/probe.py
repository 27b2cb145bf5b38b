"""Capacity and plasticity probes: how well a copy of a network still fits new targets.

The functions here work on any network and inputs; ``python -m runners.probe RUN_DIR`` applies
them to every checkpoint of a run (see runners/probe.py):

    python -m runners.probe RUN_DIR                      # capacity probe on every checkpoint
    python -m runners.probe RUN_DIR --kind plasticity    # plasticity probe
    python -m runners.probe RUN_DIR --every 4 --epochs 70

Both train a *copy* of each network of a checkpoint on a fixed dataset (the run's probe batch:
observations collected by the initial policy) and report its loss; a higher loss later in
training means lost capacity / plasticity.

* **capacity** (Lyle et al. 2022; the PFO code's ``capacity.py``): fit the outputs of a freshly
  initialised network of the same architecture (the same draw for every checkpoint). Networks
  with several outputs are treated as policies (KL(target || copy) of the softmax
  distributions, as in the PFO code), one-output networks as values (MSE).
* **plasticity** (Lyle et al. 2023): fit g(x) = a + sin(1e5 f(x; w0)) with f a fresh
  initialisation and a the checkpoint's mean output, MSE, averaged over ``--functions`` draws.

The fit follows the PFO code's ``capacity.py``: ``--epochs`` passes (1 there) over the dataset in
shuffled minibatches without replacement (the incomplete last one dropped), with the run's
minibatch size, Adam learning rate and gradient-norm clip, a new Adam per fit, no learning-rate
annealing; the reported loss is that of the last minibatch. Where it differs:

* **dataset**: the PFO code rolls the initial policy out in one environment for an evaluation
  episode budget (36,000 agent steps on Atari: 140 minibatches of 256); here it is the run's
  probe batch (``diagnostics.probe_size``, e.g. 512 observations over 8 environments on
  Atari: 2 minibatches an epoch). ``--epochs 70`` gives the PFO code's 140 steps on Atari, over
  repeated passes of the smaller dataset; ``--steps`` sets the number of minibatch steps itself.
* the policy and the value network are fitted one after the other, each with its own Adam and
  clip; the PFO code sums their two losses in one backward pass, which is the same update
  (disjoint parameters, separate optimisers and clips).

The command writes ``RUN_DIR/probes/<kind>.csv`` (step, network, loss) and ``<kind>.png``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plasticity.interventions import fresh_copy


def fit(net: nn.Module, inputs: Tensor, target_fn, loss_kind: str, steps: int | None, batch_size: int, lr: float,
        gen: torch.Generator, max_grad_norm: float = 0.0, epochs: int = 1) -> float:
    """Train ``net`` (in place) to match ``target_fn(x)``; return the loss of the last minibatch.

    Minibatches of ``batch_size`` are drawn without replacement, pass after pass over ``inputs``
    (the incomplete last minibatch of each pass dropped): ``epochs`` passes, or ``steps``
    minibatches when given. Gradients are clipped to ``max_grad_norm`` (0: no clip).
    """
    n = inputs.shape[0]
    batch_size = min(batch_size, n)
    per_pass = n // batch_size
    steps = steps if steps is not None else epochs * per_pass
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    order: list[Tensor] = []
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        if not order:
            order = list(torch.randperm(n, generator=gen).split(batch_size))[:per_pass]
        x = inputs[order.pop(0).to(inputs.device)]
        out = net(x)
        with torch.no_grad():
            target = target_fn(x)
        if loss_kind == "kl":
            loss = F.kl_div(F.log_softmax(out, -1), F.log_softmax(target, -1), log_target=True, reduction="batchmean")
        else:
            loss = F.mse_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm > 0:
            nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
        opt.step()
    return float(loss.detach())


def capacity_loss(net: nn.Module, inputs: Tensor, steps: int | None, batch_size: int, lr: float, seed: int,
                  max_grad_norm: float = 0.0, epochs: int = 1) -> float:
    torch.manual_seed(seed)  # the same fresh target for every checkpoint
    target = fresh_copy(net).eval()
    student = copy.deepcopy(net)
    with torch.no_grad():
        kind = "kl" if net(inputs[:1]).shape[-1] > 1 else "mse"
    return fit(student, inputs, target, kind, steps, batch_size, lr, torch.Generator().manual_seed(seed),
               max_grad_norm, epochs)


def plasticity_loss(net: nn.Module, inputs: Tensor, steps: int | None, batch_size: int, lr: float, seed: int,
                    functions: int, max_grad_norm: float = 0.0, epochs: int = 1) -> float:
    with torch.no_grad():
        a = net(inputs).mean(0)
    total = 0.0
    for k in range(functions):
        torch.manual_seed(seed + k)
        random_net = fresh_copy(net).eval()
        student = copy.deepcopy(net)
        total += fit(student, inputs, lambda x, g=random_net: a + torch.sin(1e5 * g(x)), "mse", steps, batch_size, lr,
                     torch.Generator().manual_seed(seed + k), max_grad_norm, epochs)
    return total / functions
