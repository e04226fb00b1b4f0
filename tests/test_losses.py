"""The losses against hand computations on tiny tensors, and the properties they must have."""

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conclugen import losses as L

D = L.MARGIN


def _ce(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], by hand."""
    return -math.log(math.exp(logits[target]) / sum(math.exp(v) for v in logits))


def _unit(rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


def test_mms_matches_hand_computation():
    p = _unit([[1.0, 0.0], [0.6, 0.8]])
    q = _unit([[0.8, 0.6], [0.0, 1.0]])
    # S = P Qᵀ by hand: [[0.8, 0], [0.48+0.48, 0.8]] minus the margin on the diagonal.
    s = [[0.8 - D, 0.0], [0.96, 0.8 - D]]
    rows = _ce(s[0], 0) + _ce(s[1], 1)  # Eq. 3
    cols = _ce([s[0][0], s[1][0]], 0) + _ce([s[0][1], s[1][1]], 1)  # Eq. 4
    expected = rows / 2 + cols / 2
    assert L.mms_loss(p, q).item() == pytest.approx(expected, abs=1e-6)


def test_mms_is_symmetric_and_lowest_when_pairs_align():
    g = torch.Generator().manual_seed(0)
    p = F.normalize(torch.randn(16, 8, generator=g), dim=1)
    q = F.normalize(p + 0.3 * torch.randn(16, 8, generator=g), dim=1)
    assert L.mms_loss(p, q).item() == pytest.approx(L.mms_loss(q, p).item(), abs=1e-6)
    aligned = L.mms_loss(p, q)
    for seed in range(5):
        perm = torch.randperm(16, generator=torch.Generator().manual_seed(seed))
        assert aligned < L.mms_loss(p, q[perm])
    assert L.mms_loss(p, p) < aligned  # identical pairs are the best case


def test_multimodal_mms_sums_the_ring_of_pairs():
    g = torch.Generator().manual_seed(1)
    v, a, t = (F.normalize(torch.randn(6, 4, generator=g), dim=1) for _ in range(3))
    ring = L.mms_loss(v, a) + L.mms_loss(a, t) + L.mms_loss(t, v)
    assert L.multimodal_mms_loss([v, a, t]).item() == pytest.approx(ring.item(), abs=1e-6)
    assert L.multimodal_mms_loss([v, t]).item() == pytest.approx(L.mms_loss(v, t).item())
    with pytest.raises(ValueError):
        L.multimodal_mms_loss([v])
    with pytest.raises(ValueError):
        L.multimodal_mms_loss([v, a, t, v])


def test_info_nce_matches_hand_computation():
    p1 = _unit([[1.0, 0.0], [0.0, 1.0]])
    p2 = _unit([[0.6, 0.8], [0.8, 0.6]])
    z = torch.cat([p1, p2]).tolist()
    tau = 0.07
    total = 0.0
    for i in range(4):  # anchors; positive = the other view of the same sample
        pos = (i + 2) % 4
        others = [k for k in range(4) if k != i]
        sims = [sum(a * b for a, b in zip(z[i], z[k], strict=True)) / tau for k in others]
        total += _ce(sims, others.index(pos))
    assert L.info_nce_loss(p1, p2, tau).item() == pytest.approx(total / 4, rel=1e-6)
    # Unnormalised inputs give the same loss (sim is the cosine).
    assert L.info_nce_loss(3 * p1, 2 * p2, tau).item() == pytest.approx(total / 4, rel=1e-6)


def test_info_nce_prefers_matching_views():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 16, generator=g)
    near = x + 0.05 * torch.randn(32, 16, generator=g)
    assert L.info_nce_loss(x, near) < L.info_nce_loss(x, near[torch.randperm(32, generator=g)])


def test_reconstruction_is_mse_summed_over_modalities():
    r = [torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0, 3.0]])]
    t = [torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]])]
    expected = (1 + 4) / 2 + (1 + 1 + 4) / 3
    assert L.reconstruction_loss(r, t).item() == pytest.approx(expected)


def _blobs(seed: int, per: int = 40):
    """Four groups on well-separated directions, with varied norms (cosine must ignore them)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.eye(4)[:, :4] * 5 + 0.5
    truth = torch.arange(4).repeat_interleave(per)
    scale = 0.5 + 2 * torch.rand(len(truth), 1, generator=g)
    x = scale * (dirs[truth] + 0.2 * torch.randn(len(truth), 4, generator=g))
    return x, truth


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a[:, None] == a[None]) == (b[:, None] == b[None])).all())


def test_kmeans_recovers_separated_blobs_deterministically():
    x, truth = _blobs(0)
    c1, l1 = L.kmeans_cosine(x, 4, torch.Generator().manual_seed(3))
    c2, l2 = L.kmeans_cosine(x, 4, torch.Generator().manual_seed(3))
    assert _same_partition(l1, truth)
    assert torch.equal(l1, l2) and torch.equal(c1, c2)
    # Centroids are the plain means of their points.
    for j in range(4):
        assert torch.allclose(c1[j], x[l1 == j].mean(0), atol=1e-5)


def test_kmeans_handles_empty_clusters_and_few_points():
    x = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)  # two distinct points, k = 4
    c, labels = L.kmeans_cosine(x, 4, torch.Generator().manual_seed(0))
    assert torch.isfinite(c).all() and c.shape == (4, 2)
    assert _same_partition(labels, torch.tensor([0] * 5 + [1] * 5))
    c, labels = L.kmeans_cosine(x[:3], 8, torch.Generator().manual_seed(0))  # k capped at n
    assert c.shape == (3, 2) and labels.max() < 3


def test_centroid_loss_matches_hand_computation():
    fused = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    cents = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    logits = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]  # R·Cᵀ by hand
    expected = 0.0
    for row, y in zip(logits, labels.tolist(), strict=True):
        row = [v - D if j == y else v for j, v in enumerate(row)]  # Eq. 10 margin
        expected += _ce(row, y)
    assert L.centroid_loss(fused, cents, labels).item() == pytest.approx(expected / 3, abs=1e-6)


def test_centroid_loss_is_invariant_to_permuting_cluster_ids():
    g = torch.Generator().manual_seed(4)
    fused, cents = torch.randn(20, 8, generator=g), torch.randn(5, 8, generator=g)
    labels = torch.randint(5, (20,), generator=g)
    perm = torch.randperm(5, generator=g)  # new id of old cluster j is perm[j]
    new_cents = torch.empty_like(cents)
    new_cents[perm] = cents
    base = L.centroid_loss(fused, cents, labels)
    assert L.centroid_loss(fused, new_cents, perm[labels]).item() == pytest.approx(base.item())


def test_clustering_loss_fuses_modalities_and_ignores_cluster_ids():
    x, truth = _blobs(1, per=10)
    x = 0.2 * x  # moderate logits, so the loss is far from 0
    outs = [x + 0.01, x - 0.01, x]  # three modalities' cluster-head outputs
    queue, current = x[:20], x[20:]
    # Different generators number the same (true) partition differently; the loss is the same.
    losses = {}
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        loss, fused = L.clustering_loss([o[20:] for o in outs], queue, k=4, generator=gen)
        assert torch.allclose(fused, current, atol=1e-6)  # Eq. 8: the mean of the modalities
        _, labels = L.kmeans_cosine(
            torch.cat([queue, current]), 4, torch.Generator().manual_seed(seed)
        )
        if _same_partition(labels, truth):
            losses[tuple(labels.tolist())] = loss.item()
    assert len(losses) > 1, "the seeds should number the clusters differently"
    values = list(losses.values())
    assert values[0] > 0.1
    assert max(values) - min(values) < 1e-5


def test_clustering_loss_uses_the_queue_for_centroids():
    x, _ = _blobs(2, per=10)
    batch = x[::10]  # 4 points, one per blob
    alone, _ = L.clustering_loss([batch], None, k=4, generator=torch.Generator().manual_seed(0))
    queued, _ = L.clustering_loss([batch], x, k=4, generator=torch.Generator().manual_seed(0))
    # Alone, each point is its own centroid; with the queue the centroids are blob means.
    c, labels = L.kmeans_cosine(torch.cat([x, batch]), 4, torch.Generator().manual_seed(0))
    expected = L.centroid_loss(batch, c, labels[-4:])
    assert queued.item() == pytest.approx(expected.item(), abs=1e-6)
    assert alone.item() != pytest.approx(queued.item(), abs=1e-4)


def test_losses_import_nothing_but_torch():
    tree = ast.parse(Path(L.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert names <= {"torch", "__future__", "collections"}
