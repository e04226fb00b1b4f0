"""``features.zarr``: the frozen-backbone features of one dataset, and look-alikes.

Layout (a zarr v3 group)::

    sample_id        [N]        str
    split            [N]        str
    video            [N, Dv]    float16 by default (2D || 3D features, 4096 at paper size)
    audio            [N, Da]    (1024)
    text             [N, Dt]    (768)
    {m}_present      [N]        bool: the sample has modality m (absent rows hold zeros)
    video_views      [N, K, Dv] optional: features of K augmented clips (Instance-Cont)
    attrs: modalities (list, canonical order), dims ({m: D}), views (K), complete (True)

A modality may be missing from the store altogether. Rows are chunked in blocks of about 16 MiB
so that reading a whole modality streams a few large chunks. The store is written under a
temporary name and renamed when complete (:func:`conclugen.io.atomic_path`); readers also refuse
a group whose ``complete`` attribute is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec

from conclugen.io import atomic_path

MODALITIES = ("video", "audio", "text")  # canonical order; MMS pairs follow it
PAPER_DIMS = {"video": 4096, "audio": 1024, "text": 768}
CHUNK_BYTES = 16 << 20
COMPRESSOR = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")


@dataclass
class FeatureSet:
    """Features of N samples in memory: torch tensors (float32 unless asked otherwise)."""

    sample_id: np.ndarray  # [N] str
    split: np.ndarray  # [N] str
    features: dict[str, torch.Tensor]  # modality -> [N, D]
    present: dict[str, torch.Tensor]  # modality -> [N] bool
    views: torch.Tensor | None = None  # [N, K, Dv] augmented video views
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample_id)

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.features.items()}

    def select(self, index) -> FeatureSet:
        """The samples at ``index`` (a boolean mask or integer indices, numpy or torch)."""
        index = torch.as_tensor(np.asarray(index))
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        np_index = index.numpy()
        return FeatureSet(
            sample_id=self.sample_id[np_index],
            split=self.split[np_index],
            features={m: x[index.to(x.device)] for m, x in self.features.items()},
            present={m: p[index.to(p.device)] for m, p in self.present.items()},
            views=None if self.views is None else self.views[index.to(self.views.device)],
            attrs=dict(self.attrs),
        )


def _chunk_rows(row_shape: tuple[int, ...], dtype) -> int:
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return max(1, CHUNK_BYTES // max(row_bytes, 1))


def create_array(group, name: str, shape: tuple[int, ...], dtype):
    """An empty array in ``group`` chunked in row blocks of about :data:`CHUNK_BYTES`."""
    rows = min(_chunk_rows(shape[1:], dtype), max(shape[0], 1))
    return group.create_array(
        name, shape=shape, dtype=dtype, chunks=(rows, *shape[1:]), compressors=COMPRESSOR
    )


def write_array(group, name: str, data, dtype) -> None:
    """Create ``name`` and copy ``data`` (numpy, torch or any sliceable array) chunk by chunk,
    so a source larger than memory (another zarr array) streams through."""
    shape = tuple(data.shape)
    arr = create_array(group, name, shape, dtype)
    rows = arr.chunks[0]
    for start in range(0, shape[0], rows):
        block = data[start : start + rows]
        if isinstance(block, torch.Tensor):
            block = block.detach().cpu().numpy()
        arr[start : start + rows] = np.asarray(block).astype(dtype, copy=False)


def write_features(
    path: str | os.PathLike,
    sample_id,
    split,
    arrays: dict,
    present: dict | None = None,
    views=None,
    dtype: str = "float16",
) -> None:
    """Write a features store atomically (see the module docstring for the layout).

    ``arrays``: modality -> [N, D]; ``present``: modality -> [N] bool (all True when omitted);
    ``views``: optional [N, K, Dv] augmented video features. Values are stored as ``dtype``.
    """
    sample_id = np.asarray(sample_id).astype(str)
    split = np.asarray(split).astype(str)
    n = len(sample_id)
    unknown = set(arrays) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
    mods = [m for m in MODALITIES if m in arrays]
    present = present or {}
    if len(split) != n or any(arrays[m].shape[0] != n for m in mods):
        raise ValueError("sample_id, split and every modality array must have the same length")
    if views is not None and (views.shape[0] != n or views.shape[2] != arrays["video"].shape[1]):
        raise ValueError("views must be [N, K, Dv] with the video feature size")
    with atomic_path(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        write_array(group, "sample_id", sample_id, str)
        write_array(group, "split", split, str)
        for m in mods:
            write_array(group, m, arrays[m], dtype)
            mask = present.get(m)
            mask = np.ones(n, bool) if mask is None else np.asarray(mask, dtype=bool)
            write_array(group, f"{m}_present", mask, bool)
        if views is not None:
            write_array(group, "video_views", views, dtype)
        group.attrs.update(
            modalities=mods,
            dims={m: int(arrays[m].shape[1]) for m in mods},
            views=0 if views is None else int(views.shape[1]),
        )
        group.attrs["complete"] = True  # last: a reader trusts nothing without it


def read_strings(arr) -> np.ndarray:
    """A stored string array as a fixed-width numpy ``str`` array (zarr yields StringDType)."""
    return arr[:].astype(object).astype(str)


def read_features(
    path: str | os.PathLike,
    modalities=None,
    split: str | None = None,
    dtype: torch.dtype | None = torch.float32,
    views: bool = True,
) -> FeatureSet:
    """Read a features store (all modalities unless ``modalities`` is given; all samples unless
    ``split`` names one). Features come back as torch tensors of ``dtype`` (None keeps the
    stored dtype, which halves memory for a float16 store); ``views=False`` skips the views."""
    group = zarr.open_group(path, mode="r")
    if not group.attrs.get("complete"):
        raise ValueError(f"{path} is not a complete features store (no 'complete' attribute)")
    stored = list(group.attrs["modalities"])
    mods = stored if modalities is None else [m for m in MODALITIES if m in modalities]
    missing = set(mods) - set(stored)
    if missing:
        raise KeyError(f"{path} has no modality {sorted(missing)} (it has {stored})")
    split_all = read_strings(group["split"])
    index = None if split is None else np.flatnonzero(split_all == split)

    def load(name):
        arr = group[name]
        out = arr[:] if index is None else arr.oindex[index]
        t = torch.from_numpy(np.ascontiguousarray(out))
        return t if dtype is None or t.dtype == torch.bool else t.to(dtype)

    sample_id = read_strings(group["sample_id"])
    has_views = views and "video" in mods and group.attrs.get("views", 0) > 0
    return FeatureSet(
        sample_id=sample_id if index is None else sample_id[index],
        split=split_all if index is None else split_all[index],
        features={m: load(m) for m in mods},
        present={m: load(f"{m}_present") for m in mods},
        views=load("video_views") if has_views else None,
        attrs=dict(group.attrs),
    )


def synthetic_features(
    n: int,
    dims: dict[str, int] | None = None,
    num_classes: int = 8,
    seed: int = 0,
    views: int = 0,
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
    instance codes (augmentations). ``missing``: modality -> fraction of samples without it.
    Returns float32 tensors; splits are assigned by a seeded permutation.
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

    feats = {m: observe(z, m) for m in dims}
    present = {m: torch.ones(n, dtype=torch.bool) for m in dims}
    for m, frac in (missing or {}).items():
        absent = torch.rand(n, generator=g) < frac
        present[m] = ~absent
        feats[m][absent] = 0
    view_t = None
    if views:
        jitter = z[:, None, :] + 0.3 * torch.randn(n, views, latent, generator=g)
        view_t = observe(jitter, "video")
    order = torch.randperm(n, generator=g).numpy()
    split = np.empty(n, dtype=object)
    bounds = np.cumsum([0] + [round(f * n) for _, f in splits])
    bounds[-1] = n
    for (name, _), lo, hi in zip(splits, bounds[:-1], bounds[1:], strict=True):
        split[order[lo:hi]] = name
    return FeatureSet(
        sample_id=np.array([f"s{i:07d}" for i in range(n)]),
        split=split.astype(str),
        features=feats,
        present=present,
        views=view_t,
        attrs={"modalities": list(dims), "dims": dict(dims), "views": views},
    )
