"""The optimizers, and setting their learning rate (the step that uses them: minigpt.step).

    adamw   torch.optim.AdamW (fused), weight decay on the >=2-D weights only
    sgd     torch.optim.SGD with momentum, the same decay groups
    muon    Muon (torch.optim.Muon, its orthogonalisation's precision and method chosen) for
            the weight matrices inside the blocks (attention and MLP), and torch.optim.AdamW
            for the rest (embeddings, head, norms, biases), stepped as one

Muon orthogonalises each matrix's momentum (Newton-Schulz iterations) before the update, so
every direction of the matrix moves at a similar rate. torch.optim.Muon's "match_rms_adamw"
scaling lets it share AdamW's learning rate and weight decay.
"""

from __future__ import annotations

import math

import torch

from minigpt.config import TrainConfig
from minigpt.errors import MiniGPTError

# Polar Express (Amsel, Persson, Musco, Gower 2025): one odd quintic per iteration, each tuned to
# pull every singular value in (0, 1] towards 1 as fast as five products allow
POLAR_EXPRESS = ((8.156554524902461, -22.48329292557795, 15.878769915207462),
                 (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                 (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                 (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                 (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer t.optimizer names, for the model's trainable parameters (t: a run
    config's .train)."""
    if t.optimizer not in ("adamw", "sgd", "muon"):
        raise MiniGPTError(f"unknown optimizer {t.optimizer!r}: adamw, sgd or muon")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for _, p in named if p.dim() >= 2]  # matrices and embeddings
    plain = [p for _, p in named if p.dim() < 2]  # biases and norm gains: never decayed
    if t.optimizer == "sgd":
        return torch.optim.SGD(decay_groups(decay, plain, t.weight_decay), lr=t.lr,
                               momentum=t.momentum)
    if t.optimizer == "muon":
        matrices = [p for n, p in named if p.dim() == 2 and n.startswith("blocks.")]
        rest = [p for p in decay if all(p is not m for m in matrices)]
        muon = Muon(matrices, lr=t.lr, weight_decay=t.weight_decay, momentum=t.muon_momentum,
                    dtype=torch.bfloat16 if t.dtype == "bfloat16" else torch.float32,
                    polar_express=t.muon_variant == "polar-express", normuon=t.normuon)
        return MuonWithAdamW(muon, adamw(decay_groups(rest, plain, t.weight_decay), t))
    return adamw(decay_groups(decay, plain, t.weight_decay), t)


class Muon(torch.optim.Muon):
    """torch.optim.Muon (nesterov momentum, "match_rms_adamw" learning rates, decoupled weight
    decay, the same state), with the orthogonalisation's precision and method chosen:

    - dtype: torch's runs in bfloat16 always, which a CPU without native bf16 computes tens of
      times slower than float32 (the fast preset's model on an AVX2 EPYC: 233 ms a Muon step,
      39 ms in float32). make_optimizer passes the run's matmul precision.
    - polar_express: the five iterations' coefficients from Polar Express instead of one
      Newton-Schulz triple repeated.
    - normuon (NorMuon, Li et al. 2025): each output neuron's (row's) orthogonalised update
      divided by the root of a running mean (beta2 0.95) of its square, then scaled back to the
      update's norm, so that no neuron's update dominates.

    The matrices of one shape are orthogonalised as one stack, in batched products: the
    same numbers, in fewer and larger products. In bfloat16 with neither option, a step is
    torch.optim.Muon's to the bit (tests/test_options.py)."""

    def __init__(self, params, lr: float, weight_decay: float, momentum: float,
                 dtype: torch.dtype = torch.float32, polar_express: bool = False,
                 normuon: bool = False, beta2: float = 0.95):
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         adjust_lr_fn="match_rms_adamw")
        self.dtype, self.polar_express, self.normuon, self.beta2 = (dtype, polar_express,
                                                                    normuon, beta2)

    def __getstate__(self) -> dict:
        """torch's (defaults, state, groups) and this Muon's own choices: a copy steps alike."""
        return {**super().__getstate__(), "dtype": self.dtype, "normuon": self.normuon,
                "polar_express": self.polar_express, "beta2": self.beta2}

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            steps = POLAR_EXPRESS if self.polar_express else \
                (group["ns_coefficients"],) * group["ns_steps"]
            same_shape = {}  # shape -> the parameters of that shape that have a gradient
            for p in group["params"]:
                if p.grad is not None:
                    same_shape.setdefault(p.shape, []).append(p)
            for params in same_shape.values():  # a stack at a time: fewer, larger products
                stack = torch.stack([self.momentum_update(p, group) for p in params])  # (B, m, n)
                ortho = orthogonalise(stack, steps, self.dtype, group["eps"],
                                      safety=1.02 if self.polar_express else 1.0)
                for p, update in zip(params, ortho, strict=True):
                    if self.normuon:
                        update = self.normalise_neurons(update, self.state[p])
                    lr = group["lr"] * 0.2 * math.sqrt(max(p.shape[:2]))  # match_rms_adamw
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update, alpha=-lr)

    def momentum_update(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """The momentum buffer moved towards the gradient; the update (nesterov, which this
        Muon always is: the gradient moved towards the new buffer)."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, 1 - group["momentum"])
        return p.grad.lerp(buf, group["momentum"])

    def normalise_neurons(self, update: torch.Tensor, state: dict) -> torch.Tensor:
        """NorMuon: (out, in) -> (out, in), each row over the root of its running mean square."""
        rows = update.float().square().mean(dim=1, keepdim=True)  # (out, 1)
        if "neuron_second_moment" not in state:
            state["neuron_second_moment"] = torch.zeros_like(rows)
        v = state["neuron_second_moment"]
        v.lerp_(rows, 1 - self.beta2)
        normalised = update.float() / (v.sqrt() + 1e-8)
        return normalised * (update.float().norm() / normalised.norm().clamp(min=1e-8))


def orthogonalise(g: torch.Tensor, steps, dtype: torch.dtype, eps: float,
                  safety: float = 1.0) -> torch.Tensor:
    """g (m, n), or a stack (B, m, n) of matrices each on its own, -> the same shape with each
    matrix's singular values pulled towards 1 (roughly U V^T for g = U S V^T): scaled to
    spectral norm <= 1, then X <- aX + b(XX^T)X + c(XX^T)^2 X for each (a, b, c) in steps, on
    the wide orientation (the smaller Gram matrix), in dtype. `safety` > 1 divides a little
    more (Polar Express's 1.02), so that bf16's rounding cannot leave a singular value above 1,
    outside the interval its coefficients were fitted on."""
    x = g.to(dtype).reshape(-1, *g.shape[-2:])  # (B, m, n)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT  # (B, n, m)
    x = x.div(x.norm(dim=(-2, -1), keepdim=True).mul(safety).clamp(min=eps))
    for a, b, c in steps:
        gram = x @ x.mT  # (B, k, k), k the smaller of m and n
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.mT if tall else x).reshape(g.shape)


def decay_groups(decay: list, plain: list, weight_decay: float) -> list[dict]:
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": plain, "weight_decay": 0.0}]


def adamw(groups: list[dict], t: TrainConfig) -> torch.optim.AdamW:
    """Fused AdamW (one kernel for the whole update; see step.step_unless_nonfinite), where it
    exists."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and params[0].device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused)


class MuonWithAdamW(torch.optim.Optimizer):
    """A Muon and an AdamW over disjoint parameters, used as one optimizer: one step, param_groups
    (Muon's, then AdamW's: the same dicts, so setting a group's lr sets it in its optimizer, and
    torch's own zero_grad clears both), one state (theirs, shared: so torch's own state_dict
    numbers the parameters on from Muon's into AdamW's), and step hooks."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.parts = (muon, adamw)
        super().__init__([p for o in self.parts for g in o.param_groups for p in g["params"]],
                         {})
        self.param_groups = [g for o in self.parts for g in o.param_groups]
        muon.state = adamw.state = self.state  # the parameters are disjoint

    def __getstate__(self) -> dict:
        """torch's and the parts: a deep copy's parts share its state and groups, as these do."""
        return {**super().__getstate__(), "parts": self.parts}

    @torch.no_grad()
    def step(self, closure=None):
        for optimizer in self.parts:
            optimizer.step()

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's own, which makes new groups and a new state; each part then takes its
        groups and the state back through its own __setstate__ (as its own load would)."""
        super().load_state_dict(state_dict)
        muon, adamw = self.parts
        n = len(muon.param_groups)
        muon.__setstate__({"state": self.state, "param_groups": self.param_groups[:n]})
        adamw.__setstate__({"state": self.state, "param_groups": self.param_groups[n:]})


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
