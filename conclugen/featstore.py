"""``features.zarr``: the frozen-backbone features of one dataset, and look-alikes.

Layout (a zarr v3 group)::

    sample_id        [N]        str
    split            [N]        str
    video            [N, Dv]    float16 by default (2D || 3D features, 4096 at paper size)
    audio            [N, Da]    (1024)
    text             [N, Dt]    (768)
    {m}_present      [N]        bool: the sample has modality m (absent rows hold zeros)
    video_views      [N, K, Dv'] optional: features of K augmented clips (Instance-Cont); they
                                 correspond to columns view_columns [a, b) of ``video``
    {m}_augmented    [N, K', D_m] optional: K' augmented copies per sample of modality m
                                 (downstream augmentation); zeros where the split is not train
                                 and where the modality is absent
    attrs: modalities (list, canonical order), dims ({m: D}), views (K), view_columns ([a, b]
           when views are stored), augmented (K', 0 without copies), complete (True)

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
    views: torch.Tensor | None = None  # [N, K, Dv'] augmented video views (attrs view_columns)
    augmented: dict[str, torch.Tensor] | None = None  # modality -> [N, K', D] augmented copies
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
        augmented = None
        if self.augmented is not None:
            augmented = {m: x[index.to(x.device)] for m, x in self.augmented.items()}
        return FeatureSet(
            sample_id=self.sample_id[np_index],
            split=self.split[np_index],
            features={m: x[index.to(x.device)] for m, x in self.features.items()},
            present={m: p[index.to(p.device)] for m, p in self.present.items()},
            views=None if self.views is None else self.views[index.to(self.views.device)],
            augmented=augmented,
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
    augmented: dict | None = None,
    view_columns: tuple[int, int] | None = None,
) -> None:
    """Write a features store atomically (see the module docstring for the layout).

    ``arrays``: modality -> [N, D]; ``present``: modality -> [N] bool (all True when omitted);
    ``views``: optional [N, K, b - a] augmented video features of ``video``'s columns
    ``view_columns`` [a, b] (default: all of them); ``augmented``: optional modality ->
    [N, K', D] augmented copies, the same K' for every modality. Values are stored as ``dtype``.
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
    if views is not None:
        a, b = view_columns or (0, int(arrays["video"].shape[1]))
        if not 0 <= a < b <= arrays["video"].shape[1]:
            raise ValueError(f"view_columns {[a, b]} outside the video features")
        if views.shape[0] != n or views.shape[2] != b - a:
            raise ValueError("views must be [N, K, b - a] for view_columns [a, b]")
        view_columns = [int(a), int(b)]
    augmented = augmented or {}
    copies = {int(x.shape[1]) for x in augmented.values()}
    if set(augmented) - set(mods) or len(copies) > 1:
        raise ValueError("augmented copies need stored modalities and one count K for all")
    if any(tuple(x.shape) != (n, *copies, arrays[m].shape[1]) for m, x in augmented.items()):
        raise ValueError("augmented copies must be [N, K, D] with the modality's feature size")
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
            group.attrs["view_columns"] = view_columns
        for m, x in augmented.items():
            write_array(group, f"{m}_augmented", x, dtype)
        group.attrs.update(
            modalities=mods,
            dims={m: int(arrays[m].shape[1]) for m in mods},
            views=0 if views is None else int(views.shape[1]),
            augmented=copies.pop() if copies else 0,
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
    augmented: bool = False,
) -> FeatureSet:
    """Read a features store (all modalities unless ``modalities`` is given; all samples unless
    ``split`` names one). Features come back as torch tensors of ``dtype`` (None keeps the
    stored dtype, which halves memory for a float16 store); ``views=False`` skips the views;
    ``augmented=True`` also reads the augmented copies of the modalities read (``augmented``
    stays None when the store has none)."""
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
    copies = None
    if augmented and group.attrs.get("augmented", 0) > 0:
        copies = {m: load(f"{m}_augmented") for m in mods if f"{m}_augmented" in group}
    return FeatureSet(
        sample_id=sample_id if index is None else sample_id[index],
        split=split_all if index is None else split_all[index],
        features={m: load(m) for m in mods},
        present={m: load(f"{m}_present") for m in mods},
        views=load("video_views") if has_views else None,
        augmented=copies,
        attrs=dict(group.attrs),
    )


def synthetic_features(
    n: int,
    dims: dict[str, int] | None = None,
    num_classes: int = 8,
    seed: int = 0,
    views: int = 0,
    augmented: int = 0,
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
    ``missing``: modality -> fraction of samples without it. Returns float32 tensors; splits are
    assigned by a seeded permutation.
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

    def jittered(k, m):
        return observe(z[:, None, :] + 0.3 * torch.randn(n, k, latent, generator=g), m)

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
    attrs = {"modalities": list(dims), "dims": dict(dims), "views": views, "augmented": augmented}
    if views:
        attrs["view_columns"] = [0, dims["video"]]
    return FeatureSet(
        sample_id=np.array([f"s{i:07d}" for i in range(n)]),
        split=split,
        features=feats,
        present=present,
        views=view_t,
        augmented=copies,
        attrs=attrs,
    )
