"""``features.zarr``: the frozen-backbone features of one dataset, and look-alikes.

Layout (a zarr v3 group)::

    sample_id        [N]        str
    split            [N]        str
    video            [N, Dv]    float16 by default (2D || 3D features, 4096 at paper size)
    audio            [N, Da]    (1024)
    text             [N, Dt]    (768)
    keypoints        [N, 80]    datasets with face tracks: MTCNN's five landmarks encoded over
                                time (:mod:`conclugen.keypoints`; MPUC's fourth modality)
    {m}_present      [N]        bool: the sample has modality m (absent rows hold zeros)
    video_views      [N, K, Dv'] optional: features of K augmented clips (Instance-Cont); they
                                 correspond to columns view_columns [a, b) of ``video``
    video_local_views [N, L, Dv'] optional: DINO's L local views (small crops), the same
                                 columns as ``video_views``, which they need
    {m}_augmented    [N, K', D_m] optional: K' augmented copies per sample of modality m
                                 (downstream augmentation; the backbones' modalities only, not
                                 keypoints); zeros where the split is not train and where the
                                 modality is absent
    {m}_windows      [N, W, D_m] optional: the features of W temporal windows per sample of
                                 modality m (MPUC's views; conclugen.features.window_span: the
                                 same seconds for every modality of a sample); zeros where the
                                 modality is absent
    attrs: modalities (list, canonical order), dims ({m: D}), views (K), view_columns ([a, b]
           when views are stored), local_views (L, 0 without them), augmented (K', 0 without
           copies), windows (W, 0 without windows; every modality stored has them or none
           does), complete (True)

A modality may be missing from the store altogether. The pipeline's stores also carry attrs
``view_roles`` (the video roles whose views are stored) and ``backbones`` (role -> its shard
stores' attrs).

Shard stores (:func:`write_shard`, one per dataset, shard and role, the output of extraction)::

    sample_id [N] str, split [N] str, feature [N, D], present [N] bool,
    views [N, K, D] optional, local_views [N, L, D] optional, augmented [N, K', D] optional
    (zeros where the clip is not a train one or lacks the modality), windows [N, W, D] optional
    attrs: the extraction's settings (role, weights, views, local_views, ...), dim (D),
           augmented (K'), windows (W), complete (True)

:func:`merge_shards` joins the shard stores of every role into ``features.zarr`` through
:func:`write_features` (video = 2D || 3D). Every store is written by :func:`write_store`: rows
chunked in blocks of about 16 MiB (so that reading a whole modality streams a few large chunks),
under a temporary name renamed when complete (:func:`conclugen.io.atomic_path`), the
``complete`` attribute last; readers (:func:`open_store`) refuse a group without it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import zarr
from zarr.codecs import BloscCodec

from conclugen.io import atomic_path

MODALITIES = ("video", "audio", "text", "keypoints")  # canonical order; MMS pairs follow it
PAPER_MODALITIES = MODALITIES[:3]  # ConCluGen's; keypoints are MPUC's (Franceschini et al.)
VIDEO_ROLES = ("video2d", "video3d")  # their features side by side make ``video``
ROLES = (*VIDEO_ROLES, "audio", "text")  # one shard store per role and backbone
KEYPOINTS_ROLE = "keypoints"  # a shard store computed from the face tracks, without a backbone
PAPER_DIMS = {"video": 4096, "audio": 1024, "text": 768}
CHUNK_BYTES = 16 << 20
COMPRESSOR = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")

log = logging.getLogger("conclugen")


@dataclass
class FeatureSet:
    """Features of N samples in memory: torch tensors (float32 unless asked otherwise)."""

    sample_id: np.ndarray  # [N] str
    split: np.ndarray  # [N] str
    features: dict[str, torch.Tensor]  # modality -> [N, D]
    present: dict[str, torch.Tensor]  # modality -> [N] bool
    views: torch.Tensor | None = None  # [N, K, Dv'] augmented video views (attrs view_columns)
    local_views: torch.Tensor | None = None  # [N, L, Dv'] DINO's local views (same columns)
    augmented: dict[str, torch.Tensor] | None = None  # modality -> [N, K', D] augmented copies
    windows: dict[str, torch.Tensor] | None = None  # modality -> [N, W, D] temporal windows
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

        def rows(arrays: dict[str, torch.Tensor] | None):
            return None if arrays is None else {m: x[index.to(x.device)] for m, x in arrays.items()}

        return FeatureSet(
            sample_id=self.sample_id[np_index],
            split=self.split[np_index],
            features={m: x[index.to(x.device)] for m, x in self.features.items()},
            present={m: p[index.to(p.device)] for m, p in self.present.items()},
            views=None if self.views is None else self.views[index.to(self.views.device)],
            local_views=None
            if self.local_views is None
            else self.local_views[index.to(self.local_views.device)],
            augmented=rows(self.augmented),
            windows=rows(self.windows),
            attrs=dict(self.attrs),
        )


@dataclass
class ShardFeatures:
    """The features of one shard for one role, in the clips' order (a shard store in memory)."""

    sample_id: np.ndarray  # [N]
    split: np.ndarray  # [N]
    feature: torch.Tensor  # [N, D] float32
    present: torch.Tensor  # [N] bool
    views: torch.Tensor | None  # [N, K, D]
    augmented: torch.Tensor | None = None  # [N, K', D]: zeros for clips not in the train split
    local_views: torch.Tensor | None = None  # [N, L, D]: DINO's local views
    windows: torch.Tensor | None = None  # [N, W, D] temporal windows


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


def write_store(path: str | os.PathLike, arrays: dict, attrs: dict) -> None:
    """Write a zarr group atomically: ``arrays`` name -> (data, dtype), each copied by
    :func:`write_array`, then ``attrs``, then ``complete`` (True) last."""
    with atomic_path(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        for name, (data, dtype) in arrays.items():
            write_array(group, name, data, dtype)
        group.attrs.update(attrs)
        group.attrs["complete"] = True  # last: a reader trusts nothing without it


def open_store(path: str | os.PathLike, kind: str = "features store"):
    """The zarr group at ``path``, read-only; refuses one without the ``complete`` attribute."""
    group = zarr.open_group(path, mode="r")
    if not group.attrs.get("complete"):
        raise ValueError(f"{path} is not a complete {kind} (no 'complete' attribute)")
    return group


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
    attrs: dict | None = None,
    local_views=None,
    windows: dict | None = None,
) -> None:
    """Write a features store atomically (see the module docstring for the layout).

    ``arrays``: modality -> [N, D]; ``present``: modality -> [N] bool (all True when omitted);
    ``views``: optional [N, K, b - a] augmented video features of ``video``'s columns
    ``view_columns`` [a, b] (default: all of them); ``local_views``: optional [N, L, b - a]
    DINO's local views of the same columns (only with ``views``); ``augmented``: optional
    modality -> [N, K', D] augmented copies, the same K' for every modality; ``windows``:
    optional modality -> [N, W, D] temporal windows, for every modality stored and the same W
    for all; ``attrs``: more attributes (not the layout's). Values are stored as ``dtype``.
    Arrays may be anything sliceable by rows with a ``shape`` (another zarr array,
    :class:`ShardRows`): they are copied in row blocks, so a store larger than memory streams
    through.
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
    if local_views is not None and (views is None or local_views.shape[::2] != views.shape[::2]):
        raise ValueError("local views need views, and their [N, L, b - a] shape")
    augmented = augmented or {}
    copies = {int(x.shape[1]) for x in augmented.values()}
    if set(augmented) - set(mods) or len(copies) > 1:
        raise ValueError("augmented copies need stored modalities and one count K for all")
    if any(tuple(x.shape) != (n, *copies, arrays[m].shape[1]) for m, x in augmented.items()):
        raise ValueError("augmented copies must be [N, K, D] with the modality's feature size")
    windows = windows or {}
    n_windows = {int(x.shape[1]) for x in windows.values()}
    if windows and (set(windows) != set(mods) or len(n_windows) > 1):
        raise ValueError(f"windows need every stored modality {mods} and one count W for all")
    if any(tuple(x.shape) != (n, *n_windows, arrays[m].shape[1]) for m, x in windows.items()):
        raise ValueError("windows must be [N, W, D] with the modality's feature size")
    columns = {"sample_id": (sample_id, str), "split": (split, str)}
    for m in mods:
        mask = present.get(m)
        mask = np.ones(n, bool) if mask is None else np.asarray(mask, dtype=bool)
        columns |= {m: (arrays[m], dtype), f"{m}_present": (mask, bool)}
    if views is not None:
        columns["video_views"] = (views, dtype)
    if local_views is not None:
        columns["video_local_views"] = (local_views, dtype)
    columns |= {f"{m}_augmented": (x, dtype) for m, x in augmented.items()}
    columns |= {f"{m}_windows": (x, dtype) for m, x in windows.items()}
    layout = {
        "modalities": mods,
        "dims": {m: int(arrays[m].shape[1]) for m in mods},
        "views": 0 if views is None else int(views.shape[1]),
        **({"view_columns": view_columns} if views is not None else {}),
        "local_views": 0 if local_views is None else int(local_views.shape[1]),
        "augmented": copies.pop() if copies else 0,
        "windows": n_windows.pop() if n_windows else 0,
    }
    if set(layout) & set(attrs or {}):
        raise ValueError(f"attrs {sorted(set(layout) & set(attrs))} are the layout's own")
    write_store(path, columns, {**layout, **(attrs or {})})


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
    local_views: bool = False,
    windows: bool = False,
) -> FeatureSet:
    """Read a features store (all modalities unless ``modalities`` is given; all samples unless
    ``split`` names one). Features come back as torch tensors of ``dtype`` (None keeps the
    stored dtype, which halves memory for a float16 store); ``views=False`` skips the views;
    ``augmented=True`` also reads the augmented copies of the modalities read (``augmented``
    stays None when the store has none); ``local_views=True`` (with ``views``) DINO's local
    views (None when the store has none); ``windows=True`` the temporal windows of the
    modalities read (None when the store has none)."""
    group = open_store(path)
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
    has_local = has_views and local_views and group.attrs.get("local_views", 0) > 0
    copies = None
    if augmented and group.attrs.get("augmented", 0) > 0:
        copies = {m: load(f"{m}_augmented") for m in mods if f"{m}_augmented" in group}
    spans = None
    if windows and group.attrs.get("windows", 0) > 0:
        spans = {m: load(f"{m}_windows") for m in mods}
    return FeatureSet(
        sample_id=sample_id if index is None else sample_id[index],
        split=split_all if index is None else split_all[index],
        features={m: load(m) for m in mods},
        present={m: load(f"{m}_present") for m in mods},
        views=load("video_views") if has_views else None,
        local_views=load("video_local_views") if has_local else None,
        augmented=copies,
        windows=spans,
        attrs=dict(group.attrs),
    )


# ---------------------------------------------------------------------------------------------
# Shard stores, and their merge into features.zarr


def write_shard(path: str | os.PathLike, shard: ShardFeatures, dtype: str, attrs: dict) -> None:
    """Write one shard's features atomically (layout in the module docstring)."""
    arrays = {
        "sample_id": (shard.sample_id, str),
        "split": (shard.split, str),
        "feature": (shard.feature, dtype),
        "present": (shard.present, bool),
    }
    if shard.views is not None:
        arrays["views"] = (shard.views, dtype)
    if shard.local_views is not None:
        arrays["local_views"] = (shard.local_views, dtype)
    if shard.augmented is not None:
        arrays["augmented"] = (shard.augmented, dtype)
    if shard.windows is not None:
        arrays["windows"] = (shard.windows, dtype)
    copies = 0 if shard.augmented is None else int(shard.augmented.shape[1])
    windows = 0 if shard.windows is None else int(shard.windows.shape[1])
    counts = {"dim": int(shard.feature.shape[1]), "augmented": copies, "windows": windows}
    write_store(path, arrays, {**attrs, **counts})


def open_shard(path: str | os.PathLike):
    """A finished shard store (refuses one without the ``complete`` attribute)."""
    return open_store(path, "shard store")


class ShardRows:
    """An [N, ...] array whose rows are built shard by shard: ``block(k)`` gives shard k's
    ``sizes[k]`` rows. Slicing rows loads only the shards the slice covers and keeps the last
    one (dropped once the last row was read), so that :func:`write_array`, reading row blocks in
    order, holds about one shard of one array in memory."""

    def __init__(self, sizes: list[int], row_shape: tuple[int, ...], block) -> None:
        self.bounds = np.cumsum([0, *sizes])
        self.shape = (int(self.bounds[-1]), *row_shape)
        self.block = block
        self._cached: tuple[int, np.ndarray] | None = None

    def _load(self, k: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != k:
            self._cached = (k, self.block(k))
        return self._cached[1]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        spans = zip(self.bounds[:-1], self.bounds[1:], strict=True)
        parts = [
            self._load(k)[max(start, lo) - lo : min(stop, hi) - lo]
            for k, (lo, hi) in enumerate(spans)
            if lo < hi and lo < stop and start < hi
        ]
        if stop == self.shape[0]:
            self._cached = None
        return np.concatenate(parts)


def merge_shards(
    shards: dict[str, list[str | os.PathLike]], out: str | os.PathLike, dtype: str = "float16"
) -> int:
    """Join per-shard, per-role stores into one features store (:func:`write_features`);
    returns N.

    ``shards``: role -> shard store paths (same shard order for every role): the video roles,
    and audio, text and keypoints where the dataset has them. A sample is kept when both video
    roles have it; the other roles' rows follow it (absent when missing). Rows are copied shard
    by shard (:class:`ShardRows`), so a dataset larger than memory streams through.

    Views: those of the video roles whose shards have them (attr ``view_roles``), concatenated
    in role order; ``view_columns`` [a, b] are the columns of ``video`` they correspond to.
    DINO's local views likewise, when every shard of those roles has them (attr
    ``local_views``: L, the fewest any has).
    Augmented copies: ``{m}_augmented`` for every backbone's modality (video = 2D || 3D) when
    every backbone role has them (attr ``augmented``: K, the fewest any shard has); zeros where
    a role lacks a row. Keypoints have none, so adding them leaves the other arrays as they are.
    Temporal windows: ``{m}_windows`` for every modality when every role has them (attr
    ``windows``: W, the fewest any shard has; video = 2D || 3D), zeros where a role lacks a row.
    """
    missing = set(VIDEO_ROLES) - set(shards)
    if missing:
        raise ValueError(f"merging needs the video roles; missing {sorted(missing)}")
    unknown = set(shards) - {*ROLES, KEYPOINTS_ROLE}
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    counts = {len(paths) for paths in shards.values()}
    if len(counts) != 1:
        raise ValueError("every role needs the same number of shards")
    groups = {role: [open_shard(p) for p in paths] for role, paths in shards.items()}
    mods = ["video"] + [m for m in MODALITIES[1:] if m in groups]  # role m makes modality m
    dims = {r: int(groups[r][0].attrs["dim"]) for r in groups}
    dims["video"] = dims["video2d"] + dims["video3d"]
    views_of = {r: min(int(g.attrs.get("views", 0)) for g in groups[r]) for r in VIDEO_ROLES}
    view_roles = [r for r in VIDEO_ROLES if views_of[r]]
    n_views = min((views_of[r] for r in view_roles), default=0)
    n_local = min(
        (int(g.attrs.get("local_views", 0)) for r in view_roles for g in groups[r]), default=0
    )
    first = dims["video2d"] if view_roles == ["video3d"] else 0
    view_columns = [first, first + sum(dims[r] for r in view_roles)]
    n_aug = min(int(g.attrs.get("augmented", 0)) for r in ROLES if r in groups for g in groups[r])
    n_windows = min(int(g.attrs.get("windows", 0)) for r in groups for g in groups[r])
    if not n_windows and any(g.attrs.get("windows", 0) for r in groups for g in groups[r]):
        log.warning("only some roles have temporal windows; features.zarr gets none")

    kept, split, rows = [], [], []  # per shard: kept ids, their split, {role: row in its shard}
    for k in range(counts.pop()):
        ids = {r: read_strings(groups[r][k]["sample_id"]) for r in groups}
        video3d = set(ids["video3d"])
        kept.append(np.array([s for s in ids["video2d"] if s in video3d], dtype=str))
        lost = set(ids["video2d"]).symmetric_difference(ids["video3d"])
        if lost:
            log.warning("shard %d: %d clips lack one of the video features; left out", k, len(lost))
        rows.append({r: pd.Index(ids[r]).get_indexer(kept[k]) for r in groups})
        split.append(read_strings(groups["video2d"][k]["split"])[rows[k]["video2d"]])
    sizes = [len(ids) for ids in kept]

    def gathered(role: str, name: str, k: int, copies: int | None = None) -> np.ndarray:
        """Shard k's ``name`` rows of ``role`` (its first ``copies``) in the order kept, zeros
        where the role lacks a row."""
        r = rows[k][role]
        found = r >= 0
        stored = groups[role][k][name][:]
        stored = stored if copies is None else stored[:, :copies]
        out = np.zeros((len(r), *stored.shape[1:]), stored.dtype)
        out[found] = stored[r[found]]
        return out

    def column(m: str, name: str, roles, width: int, copies: int | None = None) -> ShardRows:
        """Modality ``m``'s array: its roles' ``name`` rows side by side (video = 2D || 3D)."""
        row_shape = (width,) if copies is None else (copies, width)
        return ShardRows(
            sizes,
            row_shape,
            lambda k: np.concatenate([gathered(r, name, k, copies) for r in roles], -1),
        )

    roles = {"video": VIDEO_ROLES, **{m: (m,) for m in mods[1:]}}
    arrays = {m: column(m, "feature", roles[m], dims[m]) for m in mods}
    present = {m: np.concatenate([gathered(m, "present", k) for k in range(len(sizes))])
               for m in mods[1:]}  # fmt: skip
    views = None
    if n_views:
        width = view_columns[1] - view_columns[0]
        views = column("video", "views", view_roles, width, n_views)
    local_views = None
    if n_views and n_local:
        local_views = column("video", "local_views", view_roles, width, n_local)
    augmented = None
    if n_aug:
        augmented = {m: column(m, "augmented", roles[m], dims[m], n_aug)
                     for m in mods if m != KEYPOINTS_ROLE}  # fmt: skip
    windows = None
    if n_windows:
        windows = {m: column(m, "windows", roles[m], dims[m], n_windows) for m in mods}
    backbones = {
        r: {k: v for k, v in groups[r][0].attrs.items() if k != "complete"} for r in groups
    }
    write_features(
        out,
        np.concatenate(kept),
        np.concatenate(split),
        arrays,
        present=present,
        views=views,
        dtype=dtype,
        augmented=augmented,
        view_columns=view_columns if n_views else None,
        local_views=local_views,
        attrs={**({"view_roles": view_roles} if n_views else {}), "backbones": backbones},
        windows=windows,
    )
    return sum(sizes)
