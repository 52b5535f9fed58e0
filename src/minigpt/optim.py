"""The optimizers, and setting their learning rate (the step that uses them: minigpt.step).

    adamw   torch.optim.AdamW (fused), weight decay on the >=2-D weights only
    sgd     torch.optim.SGD with momentum, the same decay groups
    muon    torch.optim.Muon for the weight matrices inside the blocks (attention and MLP), and
            torch.optim.AdamW for the rest (embeddings, head, norms, biases), stepped as one

Muon orthogonalises each matrix's momentum (Newton-Schulz iterations) before the update, so
every direction of the matrix moves at a similar rate. torch.optim.Muon's "match_rms_adamw"
scaling lets it share AdamW's learning rate and weight decay.
"""

from __future__ import annotations

import torch

from minigpt.config import TrainConfig


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer t.optimizer names, for the model's trainable parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for _, p in named if p.dim() >= 2]  # matrices and embeddings
    plain = [p for _, p in named if p.dim() < 2]  # biases and norm gains: never decayed
    if t.optimizer == "sgd":
        return torch.optim.SGD(decay_groups(decay, plain, t.weight_decay), lr=t.lr,
                               momentum=t.momentum)
    if t.optimizer == "muon":
        matrices = [p for n, p in named if p.dim() == 2 and n.startswith("blocks.")]
        rest = [p for p in decay if all(p is not m for m in matrices)]
        muon = torch.optim.Muon(matrices, lr=t.lr, weight_decay=t.weight_decay,
                                momentum=t.muon_momentum, adjust_lr_fn="match_rms_adamw")
        return MuonWithAdamW(muon, adamw(decay_groups(rest, plain, t.weight_decay), t))
    return adamw(decay_groups(decay, plain, t.weight_decay), t)


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
    """A Muon and an AdamW over disjoint parameters, used as one optimizer: one step, one
    zero_grad, param_groups (Muon's, then AdamW's: the same dicts, so setting a group's lr sets
    it in its optimizer), one state_dict in the usual layout, and step hooks."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.parts = (muon, adamw)
        super().__init__([p for o in self.parts for g in o.param_groups for p in g["params"]],
                         {})
        self.param_groups = [g for o in self.parts for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        for optimizer in self.parts:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.parts:
            optimizer.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        """The parts' state dicts as one: parameters numbered on from Muon's into AdamW's."""
        state, groups, offset = {}, [], 0
        for optimizer in self.parts:
            sd = optimizer.state_dict()
            state |= {offset + i: s for i, s in sd["state"].items()}
            groups += [{**g, "params": [offset + i for i in g["params"]]}
                       for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        offset, first = 0, 0
        for optimizer in self.parts:
            n_groups = len(optimizer.param_groups)
            n = sum(len(g["params"]) for g in optimizer.param_groups)
            groups = [{**g, "params": [i - offset for i in g["params"]]}
                      for g in state_dict["param_groups"][first:first + n_groups]]
            state = {int(i) - offset: s for i, s in state_dict["state"].items()
                     if offset <= int(i) < offset + n}
            optimizer.load_state_dict({"state": state, "param_groups": groups})
            offset, first = offset + n, first + n_groups
        self.param_groups = [g for o in self.parts for g in o.param_groups]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
