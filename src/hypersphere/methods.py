"""A method: what an objective trains beside the encoder, and its loss on one batch of views (the shape of
solo-learn's methods: a method declares its modules and momentum pairs; the losses stay pure functions in losses.py).

`Method(cfg, objective, data, model)` makes and owns:
- each term's own module (losses.TermKind.own): xent's linear head, SimSiam's and BYOL's predictor, DINO's
  prototypes and centre;
- the EMA target encoder of a term that reads "targets" (BYOL, DINO's teacher);
- MoCo's key encoder and queue, for a config with queue > 0 (Fig. 9a, Tables 3 and 5).

`modules()` names them as the checkpoint does, `parameters()` are those the optimiser trains after the encoder's,
`train()` sets their mode, and `loss(model, views, labels)` is one step's objective. The momentum updates (MoCo's key
encoder, the EMA target, DINO's teacher prototypes) are applied by each module before its use in training mode, which
is after the previous optimiser step (MoCo's Algorithm 1). A new method is a term: `losses.register`
(docs/architecture.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed
from .losses import TERMS, Objective
from .moco import EMATarget, MoCo


class Method:
    def __init__(self, cfg, objective: Objective, data, model: nn.Module):
        """The modules of `objective` for `model` (the encoder as the step calls it: DDP's wrapper under torchrun),
        on the encoder's device. Called right after the encoder is made: the modules' initialisations draw from the
        global generator in this order (MoCo, then each term's module in the objective's order)."""
        device = next(model.parameters()).device
        self.objective, self.bf16 = objective, cfg.bf16
        # Barlow Twins and VICReg read the embeddings before l2-normalisation, and the predictor may (predictor_on)
        self.raw, self.projected = objective.reads("raw"), cfg.predictor_on == "projection"
        # the query encoder is trained (through DDP's wrapper); the key encoder follows it by EMA
        self.moco = MoCo(model, cfg.queue, cfg.ema, cfg.seed, cfg.intra_batch).to(device) if cfg.queue else None
        self.owned = {
            term.name: TERMS[term.name].own(cfg, data, term.param).to(device)
            for term in objective.terms
            if TERMS[term.name].own is not None
        }
        self.target = EMATarget(model, cfg.ema).to(device) if objective.reads("targets") else None

    def modules(self) -> dict[str, nn.Module]:
        """What the checkpoint keeps beside the encoder, by its keys there ("head", "moco", "predictor", "target")."""
        owned = {TERMS[name].key: m for name, m in self.owned.items()}
        return {k: m for k, m in {"moco": self.moco, **owned, "target": self.target}.items() if m is not None}

    def parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser trains beside the encoder's (the EMA copies and MoCo's key encoder are not)."""
        return [p for m in self.owned.values() for p in m.parameters() if p.requires_grad]

    def train(self) -> None:
        """Training mode for everything a step runs (MoCo holds the query encoder too)."""
        for module in self.modules().values():
            module.train()

    def loss(self, model: nn.Module, x: list[torch.Tensor], labels: torch.Tensor | None):
        """Loss and its unweighted terms on one global batch, from this process's share of it as `objective.views`
        random views `x`: the objective on all views after one forward pass (as the official code), or for MoCo on
        its queries, keys and queue (the batch's keys are enqueued afterwards). Under torchrun each process encodes
        its share and the losses see the gathered global batch (distributed.py); `labels` are the global batch's.
        With `bf16` (CUDA only) the encoders run under bf16 autocast; augmentation and losses stay fp32."""
        device = x[0].device.type
        bf16 = self.bf16 and device == "cuda"
        objective = self.objective
        if self.moco is not None:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                q, k, queue = self.moco(*(v.contiguous(memory_format=torch.channels_last) for v in x))
            q, k = distributed.gather(q.float()), distributed.gather(k.float())
            loss, terms = objective(q, k, queue=queue, intra_batch=self.moco.intra_batch)
            self.moco.enqueue(k)
            return loss, {**terms, "norm_error": _norm_error(q)}
        raw = self.raw or self.projected
        both = torch.cat(x).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out = model(both, normalize=False) if raw else model(both)
        out = [distributed.gather(v) for v in out.float().chunk(objective.views)]
        z = [F.normalize(v, dim=1) for v in out] if raw else out
        extra = {"raw": (out[0], out[-1])} if self.raw else {}
        if self.projected:
            extra["projected"] = (out[0], out[-1])
        if self.target is not None:  # the EMA target encoder's outputs on both views
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                t = self.target(both)
            extra["targets"] = tuple(distributed.gather(v) for v in t.float().chunk(objective.views))
        # the terms' modules run on the global batch: the same on every process
        loss, terms = objective(z[0], z[-1], owned=self.owned, labels=labels, **extra)
        terms["norm_error"] = _norm_error(z[0])
        if objective.collapse_prone:
            terms["spread"] = _spread(z[0])
        return loss, terms


def _spread(z: torch.Tensor) -> torch.Tensor:
    """sqrt(d) times the mean over dimensions of the features' std over the batch: about 1 for features spread over
    the sphere, 0 for a collapsed encoder (every input mapped to one point)."""
    return z.detach().std(0).mean() * z.shape[1] ** 0.5


def _norm_error(z: torch.Tensor) -> torch.Tensor:
    """max | ||z_i|| - 1 |: 0 for features on the sphere, 1 for an encoder whose outputs died to zero (a finite
    loss can hide it: all-zero features give the contrastive loss log(2K - 1))."""
    return (z.detach().norm(dim=1) - 1).abs().max()
