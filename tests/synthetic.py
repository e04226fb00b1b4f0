"""Synthetic features stores for the tests and the benchmarks: look-alike features with known
cluster and instance structure (:func:`synthetic_features`)."""

from __future__ import annotations

import numpy as np
import torch

from conclugen.featstore import PAPER_DIMS, FeatureSet


def synthetic_features(
    n: int,
    dims: dict[str, int] | None = None,
    num_classes: int = 8,
    seed: int = 0,
    views: int = 0,
    augmented: int = 0,
    local_views: int = 0,
    windows: int = 0,
    latent: int = 16,
    noise: float = 0.3,
    missing: dict[str, float] | None = None,
    splits=(("train", 0.8), ("val", 0.1), ("test", 0.1)),
) -> FeatureSet:
    """Look-alike features with a latent structure shared across modalities.

    Each sample has a class c (cluster structure) and an instance code z = mu_c + eps (instance
    structure); modality m sees ``relu(W_m z) + noise`` through its own random map W_m, so
    cross-modal retrieval can match instances and clustering can find the classes, but only
    after learning to undo the per-modality maps. Views are the video features of jittered
    instance codes (augmentations); so are the ``augmented`` copies, per modality, of the train
    samples (zeros elsewhere and where the modality is absent, as extraction stores them).
    ``local_views`` (DINO's small crops) are video features of codes jittered twice as much
    (a small crop shows less of the clip). ``windows`` temporal windows per sample are jittered
    codes too, one jitter per window shared by every modality (a window is one stretch of the
    clip in all of them; zeros where the modality is absent). ``missing``: modality -> fraction
    of samples without it. Returns float32 tensors; splits are assigned by a seeded permutation.
    """
    dims = dims or PAPER_DIMS
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(num_classes, (n,), generator=g)
    centres = 1.5 * torch.randn(num_classes, latent, generator=g)
    z = centres[cls] + torch.randn(n, latent, generator=g)
    maps = {m: torch.randn(latent, d, generator=g) / latent**0.5 for m, d in dims.items()}

    def observe(code, m):
        x = torch.relu(code @ maps[m])  # non-negative, like pooled post-ReLU CNN features
        return x + noise * torch.randn(x.shape, generator=g)

    def jittered(k, m, scale=0.3):
        return observe(z[:, None, :] + scale * torch.randn(n, k, latent, generator=g), m)

    feats = {m: observe(z, m) for m in dims}
    present = {m: torch.ones(n, dtype=torch.bool) for m in dims}
    for m, frac in (missing or {}).items():
        absent = torch.rand(n, generator=g) < frac
        present[m] = ~absent
        feats[m][absent] = 0
    view_t = jittered(views, "video") if views else None
    order = torch.randperm(n, generator=g).numpy()
    split = np.empty(n, dtype=object)
    bounds = np.cumsum([0] + [round(f * n) for _, f in splits])
    bounds[-1] = n
    for (name, _), lo, hi in zip(splits, bounds[:-1], bounds[1:], strict=True):
        split[order[lo:hi]] = name
    split = split.astype(str)
    # Drawn after the splits, so that asking for copies changes nothing else.
    copies = {m: jittered(augmented, m) for m in dims} if augmented else None
    for m, x in (copies or {}).items():
        x[~present[m] | torch.from_numpy(split != "train")] = 0
    local_t = jittered(local_views, "video", 0.6) if local_views else None  # likewise
    spans = None
    if windows:  # drawn last, so that asking for windows changes nothing else
        codes = z[:, None, :] + 0.3 * torch.randn(n, windows, latent, generator=g)
        spans = {m: observe(codes, m) for m in dims}
        for m, x in spans.items():
            x[~present[m]] = 0
    attrs = {"modalities": list(dims), "dims": dict(dims), "views": views, "augmented": augmented,
             "local_views": local_views, "windows": windows}  # fmt: skip
    if views:
        attrs["view_columns"] = [0, dims["video"]]
    return FeatureSet(
        sample_id=np.array([f"s{i:07d}" for i in range(n)]),
        split=split,
        features=feats,
        present=present,
        views=view_t,
        local_views=local_t,
        augmented=copies,
        windows=spans,
        attrs=attrs,
    )
