"""The pretraining model: representation heads, shared projection head, cluster head, decoders.

Follows the authors' ``ConCluModel``. Backbones are frozen and their features precomputed, so the
model only sees feature vectors: per modality a representation head F (Sec. 3.1) to ``rep_dim``
(4096 in the paper), ONE projection head J shared by all modalities, a one-layer cluster head G,
and one decoder Q per modality (Sec. 3.4). MPUC (Franceschini et al.) instead gives each
modality a projection head of its own, fc + ReLU + fc (``projection="per_modality"``).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F


class ContextGating(nn.Module):
    """x * sigmoid(W x + b): MCN's context gating (``F.glu(cat(x, fc(x)))``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x))


class GatedEmbeddingUnit(nn.Module):
    """fc1 -> ReLU -> context gating -> fc2 -> ReLU (authors' GatedEmbeddingUnit, from MCN)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.cg = ContextGating(out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x):
        return F.relu(self.fc2(self.cg(F.relu(self.fc1(x)))))


def representation_head(modality: str, in_dim: int, rep_dim: int) -> nn.Module:
    """F_m: a GEU to ``rep_dim``; audio keeps its width in the GEU and then maps linearly to
    ``rep_dim`` without a final ReLU, as in the authors' code (GEU(1024->1024) -> Linear)."""
    if modality == "audio":
        return nn.Sequential(GatedEmbeddingUnit(in_dim, in_dim), nn.Linear(in_dim, rep_dim))
    return GatedEmbeddingUnit(in_dim, rep_dim)


class ConCluGenModel(nn.Module):
    """Heads for the modalities in ``in_dims`` (name -> input feature size, e.g. video 4096,
    audio 1024, text 768). ``num_clusters=0`` omits the cluster head, ``rec_dim=0`` the decoders.

    ``proj_hidden_dim`` is the projection head's hidden width (default ``rep_dim // 8``, the
    authors'). ``input_columns`` (modality -> [a, b]) records that a head reads only columns a:b
    of its modality's features in ``features.zarr`` (Instance-Cont's video head: the 3D half);
    the model itself is fed those columns already, and downstream slices them out.

    ``final_relu=True`` adds the authors' extra ReLU after the projection head's last Linear
    (making projections non-negative) and after each decoder (which then cannot reproduce
    negative features, e.g. text); the default follows the paper's description (no such ReLU).

    ``projection="shared"``: J = Linear -> BatchNorm -> ReLU -> Linear, one for all modalities
    (``self.projection`` a Sequential); ``"per_modality"``: MPUC's Linear -> ReLU -> Linear, one
    per modality (``self.projection`` a ModuleDict).
    """

    def __init__(
        self,
        in_dims: dict[str, int],
        rep_dim: int = 4096,
        proj_dim: int = 512,
        num_clusters: int = 8,
        rec_dim: int = 4096,
        final_relu: bool = False,
        proj_hidden_dim: int | None = None,
        input_columns: dict[str, list[int]] | None = None,
        projection: str = "shared",
    ):
        super().__init__()
        if projection not in ("shared", "per_modality"):
            raise ValueError(f"projection must be 'shared' or 'per_modality', not {projection!r}")
        proj_hidden_dim = proj_hidden_dim or rep_dim // 8
        self.kwargs = dict(
            in_dims=dict(in_dims),
            rep_dim=rep_dim,
            proj_dim=proj_dim,
            num_clusters=num_clusters,
            rec_dim=rec_dim,
            final_relu=final_relu,
            proj_hidden_dim=proj_hidden_dim,
            input_columns={m: list(c) for m, c in (input_columns or {}).items()},
            projection=projection,
        )
        tail = [nn.ReLU()] if final_relu else []
        self.heads = nn.ModuleDict(
            {m: representation_head(m, d, rep_dim) for m, d in in_dims.items()}
        )
        if projection == "shared":
            self.projection = nn.Sequential(
                nn.Linear(rep_dim, proj_hidden_dim),
                nn.BatchNorm1d(proj_hidden_dim),
                nn.ReLU(),
                nn.Linear(proj_hidden_dim, proj_dim),
                *tail,
            )
        else:
            self.projection = nn.ModuleDict(
                {
                    m: nn.Sequential(
                        nn.Linear(rep_dim, proj_hidden_dim),
                        nn.ReLU(),
                        nn.Linear(proj_hidden_dim, proj_dim),
                        *tail,
                    )
                    for m in in_dims
                }
            )
        self.cluster = nn.Linear(proj_dim, num_clusters, bias=False) if num_clusters else None
        self.decoders = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.Linear(rep_dim, rec_dim), nn.ReLU(), nn.Linear(rec_dim, d), *tail
                )
                for m, d in in_dims.items()
            }
            if rec_dim
            else {}
        )

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """For each modality in ``x``: ``rep`` (D, the downstream representation), ``proj``
        (P, L2-normalised, float32), ``cluster`` (g, from the un-normalised projection) and
        ``recon`` (Q(D)) where the model has those heads. The shared projection head (and its
        BatchNorm statistics) is applied to each modality's batch separately."""
        out = {}
        shared = isinstance(self.projection, nn.Sequential)
        for m, xm in x.items():
            h = self.heads[m](xm)
            z = self.projection(h) if shared else self.projection[m](h)
            o = {"rep": h, "proj": F.normalize(z.float(), dim=-1)}
            if self.cluster is not None:
                o["cluster"] = self.cluster(z)
            if m in self.decoders:
                o["recon"] = self.decoders[m](h)
            out[m] = o
        return out


def save_model(model: ConCluGenModel, path: str | os.PathLike, **extra) -> None:
    """Write ``{"kwargs", "state_dict", **extra}``: enough to rebuild the model without its
    training code (``extra``: method and hyperparameters, for the record). Not atomic by itself."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"kwargs": model.kwargs, "state_dict": state, **extra}, path)


def load_model(path: str | os.PathLike, map_location="cpu") -> ConCluGenModel:
    """Rebuild a :class:`ConCluGenModel` from a file written by :func:`save_model`."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = ConCluGenModel(**ckpt["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model
