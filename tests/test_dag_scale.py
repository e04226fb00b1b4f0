"""The DAG at the real datasets' sizes and the paper config's sharding (benchmarks/dag_scale.py
times it; here the plan itself is checked)."""

from benchmarks.dag_scale import REAL_SIZES, plan, prepare

SHARDS = {"voxceleb2": 512, "caer": 8, "meld": 8, "mosei": 16}


def test_a_full_size_dry_run_plans_one_job_per_shard_and_stage(tmp_path):
    seconds, counts, _ = plan(tmp_path, prepare(tmp_path))
    print(f"full-size dry run: {counts['total']} jobs in {seconds:.1f} s")
    for dataset, n in REAL_SIZES.items():
        assert (tmp_path / "results" / dataset / "manifest.parquet").stat().st_size > n
    shards = sum(SHARDS.values())
    assert counts["probe"] == shards
    assert counts["features"] == 2 * shards  # audio, text
    assert counts["features_video"] == shards  # video2d and video3d from one decode
    assert counts["faces"] == shards - SHARDS["voxceleb2"]  # VoxCeleb2 is not cropped
    assert counts["features_keypoints"] == counts["faces"]  # MTCNN's landmarks, MPUC's K
    assert counts["subtitles"] == SHARDS["voxceleb2"] + SHARDS["caer"]
    assert counts["features_merge"] == counts["failures"] == counts["dataset_stats"] == 4
    assert counts["pretrain"] == 12  # the paper's 8 methods, BYOL, DINO and MPUC's two
    assert counts["downstream"] == 3 * (1 + 12)  # 3 datasets x (supervised + 12 methods)
    assert "download" not in counts and "manifest" not in counts  # done already
