"""The keypoints modality: normalisation, interpolation and encoding by hand, the role's shard,
and a features.zarr with keypoints whose other arrays are those of one without."""

import numpy as np
import pandas as pd
import pytest
import torch

from conclugen import featstore
from conclugen.downstream import build_classifier, resolve_hparams
from conclugen.featstore import ShardFeatures, merge_shards, write_shard
from conclugen.keypoints import (
    FEATURE_DIM,
    clip_feature,
    encode,
    keypoint_features,
    normalise,
)
from conclugen.ledger import FailureLedger


def face_rows(sample_id: str, points: np.ndarray, detected) -> pd.DataFrame:
    """A clip's rows of a faces parquet: ``points`` [T, 5, 2] (NaN rows where not detected)."""
    t = len(points)
    return pd.DataFrame(
        {
            "sample_id": [sample_id] * t,
            "frame": np.arange(t, dtype=np.int32),
            "detected": np.asarray(detected, bool),
            "landmarks": list(points.reshape(t, 10).astype(np.float32)),
        }
    )


# Five points of a face 40 px wide: eyes, nose, mouth corners (pixels).
FACE = np.array([[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]], float)


def test_normalise_is_min_max_per_axis_over_the_clip_and_fills_the_gaps():
    # The face moves 4 px right per frame; frame 1 has no detection, frame 2 was not examined.
    points = np.stack([FACE + [4 * i, 0] for i in range(4)])
    found = np.array([True, False, False, True])
    points[1:3] = np.nan
    out = normalise(points, found)
    # x spans 10 .. 30 + 12 = 42 over the found frames (width 32), y 10 .. 30 (width 20).
    np.testing.assert_allclose(out[0, 0], [0, 0])  # left eye, first frame: both minima
    np.testing.assert_allclose(out[3, 1], [1, 0])  # right eye, last frame: the largest x
    np.testing.assert_allclose(out[3, 4], [30 / 32, 1])  # right mouth corner: the largest y
    np.testing.assert_allclose(out[0, 2], [10 / 32, 0.5])
    # the missing frames are interpolated between frames 0 and 3: the face at 4 and 8 px
    np.testing.assert_allclose(out[1], (FACE + [4, 0] - [10, 10]) / [32, 20])
    np.testing.assert_allclose(out[2], (FACE + [8, 0] - [10, 10]) / [32, 20])
    # before the first and after the last detection the points are held
    held = normalise(points[[1, 0, 3, 2]], found[[1, 0, 3, 2]])
    np.testing.assert_allclose(held[0], held[1])
    np.testing.assert_allclose(held[3], held[2])
    with pytest.raises(ValueError):
        normalise(points, np.zeros(4, bool))


def test_encode_is_mean_std_min_max_of_positions_and_velocities():
    x = np.array([[0.0, 1.0], [0.5, 1.0], [0.5, 0.0]])  # T = 3, two coordinates
    # positions: mean [1/3, 2/3], std [sqrt(1/18), sqrt(2/9)], min [0, 0], max [0.5, 1]
    # velocities [[0.5, 0], [0, -1]]: mean [0.25, -0.5], std [0.25, 0.5], min [0, -1], max [0.5, 0]
    expected = [1 / 3, 2 / 3, (1 / 18) ** 0.5, (2 / 9) ** 0.5, 0, 0, 0.5, 1,
                0.25, -0.5, 0.25, 0.5, 0, -1, 0.5, 0]  # fmt: skip
    np.testing.assert_allclose(encode(x), expected, rtol=1e-6, atol=1e-7)
    # one frame: its position and zero velocities
    np.testing.assert_allclose(encode(x[:1]), [0, 1, 0, 0, 0, 1, 0, 1] + [0] * 8)


def test_a_clip_feature_is_80_values_and_does_not_depend_on_where_the_face_is():
    moving = np.stack([FACE * (1 + 0.02 * i) + [3 * i, i] for i in range(20)])
    a = clip_feature(face_rows("a", moving, np.ones(20)))
    b = clip_feature(face_rows("b", moving * 2 + [100, 50], np.ones(20)))  # bigger, elsewhere
    assert a.shape == (FEATURE_DIM,) == (80,) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)  # min-max per clip removes position and scale
    still = clip_feature(face_rows("c", np.stack([FACE] * 20), np.ones(20)))
    assert np.all(still[40:] == 0)  # a still face has no velocity
    assert not np.allclose(a[:40], still[:40])


def test_the_shard_follows_the_clips_and_a_clip_without_a_face_has_no_keypoints():
    moving = np.stack([FACE + [i, 0] for i in range(8)])
    nothing = np.full((8, 5, 2), np.nan)
    faces = pd.concat(
        [
            face_rows("centre", nothing, np.zeros(8)),  # kept with a centre crop: no detection
            face_rows("good", moving, np.ones(8)),
            face_rows("broken", moving, np.ones(8)),
        ],
        ignore_index=True,
    )
    faces.at[faces.index[faces["sample_id"] == "broken"][3], "landmarks"] = np.zeros(4)
    clips = pd.DataFrame({"sample_id": ["good", "broken", "centre"],
                          "split": ["train", "val", "test"]})  # fmt: skip
    ledger = FailureLedger("features/keypoints")
    shard = keypoint_features(clips, faces, ledger)
    assert shard.sample_id.tolist() == ["good", "centre"]
    assert shard.split.tolist() == ["train", "test"]
    assert shard.present.tolist() == [True, False]
    assert shard.feature.shape == (2, FEATURE_DIM) and shard.feature[1].abs().sum() == 0
    np.testing.assert_allclose(shard.feature[0], clip_feature(faces[faces.sample_id == "good"]))
    assert [(r[0], r[3]) for r in ledger.rows] == [("broken", "dropped")]
    assert "landmarks must be 10 values" in ledger.rows[0][2]


def role_shard(ids, dim, copies=0):
    """A shard of ``ids`` whose rows are distinct, with ``copies`` augmented copies."""
    n = len(ids)
    feature = torch.arange(n * dim, dtype=torch.float32).reshape(n, dim) + dim
    return ShardFeatures(
        sample_id=np.array(ids),
        split=np.array(["train"] * n),
        feature=feature,
        present=torch.ones(n, dtype=torch.bool),
        views=None,
        augmented=feature[:, None].repeat(1, copies, 1) + 0.5 if copies else None,
    )


def test_keypoints_join_features_zarr_and_change_none_of_the_other_arrays(tmp_path):
    dims = {"video2d": 4, "video3d": 2, "audio": 3, "text": 5}
    paths = {}
    for role, dim in dims.items():
        paths[role] = [tmp_path / role / "0.zarr"]
        write_shard(paths[role][0], role_shard(["a", "b", "c"], dim, copies=2), "float32",
                    {"role": role})  # fmt: skip
    keypoints = role_shard(["a", "c"], FEATURE_DIM)  # b's landmarks went to the ledger
    keypoints.present = torch.tensor([True, False])  # c: centre crop, no detection: zeros
    keypoints.feature[1] = 0
    with_kp = {**paths, "keypoints": [tmp_path / "keypoints" / "0.zarr"]}
    write_shard(with_kp["keypoints"][0], keypoints, "float32", {"role": "keypoints"})
    merge_shards(paths, tmp_path / "without.zarr", "float16")
    merge_shards(with_kp, tmp_path / "with.zarr", "float16")
    before = featstore.read_features(tmp_path / "without.zarr", augmented=True)
    after = featstore.read_features(tmp_path / "with.zarr", augmented=True)
    assert after.modalities == ["video", "audio", "text", "keypoints"]
    assert after.dims["keypoints"] == 80
    assert after.present["keypoints"].tolist() == [True, False, False]
    assert torch.equal(after.features["keypoints"][0], keypoints.feature[0])
    assert after.features["keypoints"][1:].abs().sum() == 0
    # What the existing methods read is unchanged: every array but keypoints', the copies too.
    assert after.attrs["augmented"] == before.attrs["augmented"] == 2
    assert set(after.augmented) == set(before.augmented) == {"video", "audio", "text"}
    for m in before.modalities:
        assert torch.equal(after.features[m], before.features[m])
        assert torch.equal(after.present[m], before.present[m])
        assert torch.equal(after.augmented[m], before.augmented[m])
    assert np.array_equal(after.sample_id, before.sample_id)
    paper = featstore.read_features(tmp_path / "with.zarr", ["video", "audio", "text"])
    assert paper.modalities == before.modalities
    # The supervised baseline keeps the paper's three heads on a store with keypoints.
    hp = resolve_hparams({"rep_dim": 8})
    assert list(build_classifier("supervised", None, after.dims, 7, hp).heads) == [
        "video", "audio", "text"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown roles"):
        merge_shards({**paths, "landmarks": paths["audio"]}, tmp_path / "bad.zarr")
