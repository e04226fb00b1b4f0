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


def _cos(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True)) / math.hypot(*u) / math.hypot(*v)


def _pairwise_by_hand(m: list, n: list, tau: float) -> float:
    """MPUC's L^{m,n} with two views, term by term: ``m``, ``n`` are [view][clip] vectors."""
    b, total = len(m[0]), 0.0
    for v in (0, 1):
        for i in range(b):
            pos = math.exp(_cos(m[v][i], n[1 - v][i]) / tau)
            kept = [(w, j) for w in (0, 1) for j in range(b) if (w, j) != (v, i)]
            den = sum(math.exp(_cos(m[v][i], n[w][j]) / tau) for w, j in kept)
            total += -math.log(pos / den) / 2
    return total / (2 * b)


# Two modalities, B = 3 clips, two temporal views each (not unit length: sim is the cosine).
# m's clips are spread apart, n's close together: n's negatives are hard ones for m's anchors.
MPUC_M = [[[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]], [[0.8, 0.6], [0.0, 1.0], [-1.0, 1.0]]]
MPUC_N = [[[1.0, 0.1], [1.0, 0.3], [0.9, 0.5]], [[1.0, 0.2], [0.8, 0.4], [1.0, 0.6]]]


def test_mpuc_matches_hand_computation():
    m, n = (torch.tensor(x, dtype=torch.float64) for x in (MPUC_M, MPUC_N))
    tau = 0.5
    mn, nm = _pairwise_by_hand(MPUC_M, MPUC_N, tau), _pairwise_by_hand(MPUC_N, MPUC_M, tau)
    assert L.pairwise_contrastive_loss(m, n, tau).item() == pytest.approx(mn, rel=1e-6)
    assert L.pairwise_contrastive_loss(n, m, tau).item() == pytest.approx(nm, rel=1e-6)
    assert abs(mn - nm) > 0.1  # negatives from one modality only: asymmetric
    assert L.mpuc_loss([m, n], tau).item() == pytest.approx((mn + nm) / 2, rel=1e-6)
    # Every view of every clip the same unit vector e_i: the positive has cosine 1 and the other
    # 2B - 2 rows left in the denominator cosine 0, so each term is log(1 + 4 e^(-1/tau)) / 2.
    same = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    assert L.mpuc_loss([same, same], tau).item() == pytest.approx(
        math.log(1 + 4 * math.exp(-1 / tau)) / 2, rel=1e-6
    )


def test_mpuc_with_one_view_is_eq_1_as_printed():
    m, n = MPUC_M[0], MPUC_N[0]
    tau = 0.07
    by_hand = 0.0
    for i in range(3):  # the denominator leaves the positive out: 1[i != j]
        pos = math.exp(_cos(m[i], n[i]) / tau)
        by_hand += -math.log(
            pos / sum(math.exp(_cos(m[i], n[j]) / tau) for j in range(3) if j != i)
        )
    got = L.pairwise_contrastive_loss(torch.tensor(m), torch.tensor(n), tau).item()
    assert got == pytest.approx(by_hand / 3, rel=1e-5)
    one_view = [torch.tensor(x)[None] for x in (m, n)]  # [1, B, d] is the same as [B, d]
    assert L.pairwise_contrastive_loss(*one_view, tau).item() == pytest.approx(got)


def test_mpuc_averages_every_ordered_pair_and_prefers_matching_clips():
    g = torch.Generator().manual_seed(4)
    mods = [torch.randn(2, 8, 6, generator=g) for _ in range(3)]
    pairs = [L.pairwise_contrastive_loss(p, q) for p in mods for q in mods if p is not q]
    assert len(pairs) == 6
    assert L.mpuc_loss(mods).item() == pytest.approx(sum(pairs).item() / 6, rel=1e-6)
    x = torch.randn(2, 16, 8, generator=g)
    near = x + 0.05 * torch.randn(2, 16, 8, generator=g)
    shuffled = near[:, torch.randperm(16, generator=g)]
    assert L.mpuc_loss([x, near]) < L.mpuc_loss([x, shuffled])
    with pytest.raises(ValueError):
        L.mpuc_loss([x])
    with pytest.raises(ValueError):
        L.pairwise_contrastive_loss(x, near[:, :8])  # not the same clips
    with pytest.raises(ValueError):
        L.pairwise_contrastive_loss(torch.randn(3, 4, 8), torch.randn(3, 4, 8))  # 3 views


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


def test_byol_loss_matches_hand_computation():
    p1, p2 = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])  # online predictions
    z1, z2 = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 1.0]])  # target projections
    # Eq. 2: ||p/|p| - z/|z|||^2 of each prediction against the other view's target.
    a = (0.6 - 1 / math.sqrt(2)) ** 2 + (0.8 - 1 / math.sqrt(2)) ** 2  # p1 vs z2
    b = (1.0 - 0.0) ** 2 + (0.0 - 1.0) ** 2  # p2 vs z1
    assert L.byol_regression(p1, z2).item() == pytest.approx(a, abs=1e-6)
    assert a == pytest.approx(2 - 2 * 1.4 / math.sqrt(2))  # = 2 - 2 cos
    assert L.byol_loss(p1, p2, z1, z2).item() == pytest.approx(a + b, abs=1e-6)  # Eq. 3
    batch = L.byol_loss(torch.cat([p1, p2]), torch.cat([p2, p1]), torch.cat([z1, z2]),
                        torch.cat([z2, z1]))  # fmt: skip
    assert batch.item() == pytest.approx(a + b, abs=1e-6)  # the mean over the batch


def test_byol_loss_sends_no_gradient_to_the_target():
    g = torch.Generator().manual_seed(5)
    p1, p2, z1, z2 = (torch.randn(4, 3, generator=g, requires_grad=True) for _ in range(4))
    L.byol_loss(p1, p2, z1, z2).backward()
    assert p1.grad is not None and p2.grad is not None
    assert z1.grad is None and z2.grad is None


def _softmax(v: list[float], t: float) -> list[float]:
    e = [math.exp(x / t) for x in v]
    return [x / sum(e) for x in e]


def test_dino_loss_matches_hand_computation():
    s = [[[1.0, 0.0, -1.0]], [[0.0, 0.5, 0.0]]]  # student logits of views 1, 2 (B = 1, K = 3)
    t = [[[0.2, 0.1, 0.0]], [[0.0, 0.0, 0.3]]]  # teacher logits
    c, ts, tt = [0.1, 0.0, 0.05], 0.1, 0.04

    def h(tv, sv):  # H(P_t, P_s) = -sum P_t log P_s, Eq. 2
        pt = _softmax([a - b for a, b in zip(tv, c, strict=True)], tt)  # centred, sharpened
        ps = _softmax(sv, ts)
        return -sum(a * math.log(b) for a, b in zip(pt, ps, strict=True))

    expected = (h(t[0][0], s[1][0]) + h(t[1][0], s[0][0])) / 2  # Eq. 3: other views only
    got = L.dino_loss([torch.tensor(v) for v in s], [torch.tensor(v) for v in t],
                      torch.tensor([c]), ts, tt)  # fmt: skip
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_dino_multi_crop_loss_pairs_each_teacher_global_with_every_other_student_view():
    # B = 2, K = 2: 2 global views (teacher and student), 2 local views (student only).
    student_globals = [[[0.3, -0.1], [0.0, 0.2]], [[1.0, 0.0], [-0.4, 0.4]]]
    student_locals = [[[0.5, 0.5], [0.2, -0.2]], [[-1.0, 0.3], [0.1, 0.0]]]
    s = student_globals + student_locals
    t = [[[0.4, 0.0], [0.1, 0.3]], [[0.0, 0.2], [-0.3, 0.0]]]  # teacher, globals 1 and 2
    c, ts, tt = [0.05, -0.05], 0.1, 0.04

    def h(tv, sv):  # H(P_t, P_s) of one sample
        pt = _softmax([a - b for a, b in zip(tv, c, strict=True)], tt)
        ps = _softmax(sv, ts)
        return -sum(a * math.log(b) for a, b in zip(pt, ps, strict=True))

    # Eq. 3: teacher global i against student view j != i: (1, 2), (1, l1), (1, l2), (2, 1),
    # (2, l1), (2, l2); each pair's mean over the batch, then the mean over the 6 pairs.
    pairs = [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    expected = sum((h(t[i][0], s[j][0]) + h(t[i][1], s[j][1])) / 2 for i, j in pairs) / 6
    got = L.dino_loss([torch.tensor(v) for v in s], [torch.tensor(v) for v in t],
                      torch.tensor([c]), ts, tt)  # fmt: skip
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_dino_teacher_is_centred_sharpened_and_gets_no_gradient():
    g = torch.Generator().manual_seed(6)
    s1, s2 = (torch.randn(8, 5, generator=g, requires_grad=True) for _ in range(2))
    t1, t2 = (torch.randn(8, 5, generator=g, requires_grad=True) for _ in range(2))
    L.dino_loss([s1, s2], [t1, t2], torch.zeros(1, 5)).backward()
    assert s1.grad is not None and t1.grad is None and t2.grad is None
    # A centre equal to the teacher's logits leaves a uniform target: H = -mean_k log P_s(k).
    student = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.3, -0.2, 0.9, 0.0, 0.1]])
    uniform = -sum(math.log(p) for p in _softmax(student[0].tolist(), 0.1)) / 5
    got = L.dino_loss([student, student], [teacher, teacher], teacher, 0.1, 0.04)
    assert got.item() == pytest.approx(uniform, rel=1e-6)
    # The lower the teacher temperature, the sharper its target: against a student sure of the
    # teacher's top prototype, the cross-entropy falls as tau_t falls.
    sure = 100 * F.one_hot(teacher.argmax(1), 5).float()
    losses = [L.dino_loss([sure, sure], [teacher, teacher], torch.zeros(1, 5), 0.1, t).item()
              for t in (1.0, 0.1, 0.04)]  # fmt: skip
    assert losses[0] > losses[1] > losses[2]


def test_dino_center_is_an_ema_of_the_teacher_batch_mean():
    c = torch.tensor([[1.0, 0.0]])
    t1, t2 = torch.tensor([[2.0, 2.0], [0.0, 2.0]]), torch.tensor([[4.0, 0.0], [2.0, 0.0]])
    mean = [(2 + 0 + 4 + 2) / 4, (2 + 2 + 0 + 0) / 4]  # over both views' batches
    expected = [0.9 * 1.0 + 0.1 * mean[0], 0.9 * 0.0 + 0.1 * mean[1]]
    got = L.dino_center(c, [t1, t2], 0.9)
    assert got.tolist()[0] == pytest.approx(expected)
    assert c.tolist() == [[1.0, 0.0]]  # a new tensor; the old centre is left alone


# --- continuous labels (SS-VAERR Eq. 1-6) ------------------------------------------------------


def test_ccc_matches_hand_computation():
    y, p = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 5.0])
    # mu_y 2, mu_p 3; cov = ((-1)(-1) + 0 + (1)(2)) / 3 = 1; var_y 2/3, var_p (1 + 1 + 4) / 3 = 2.
    expected = 2 * 1 / (2 / 3 + 2 + (3 - 2) ** 2)
    assert L.ccc(p, y).item() == pytest.approx(expected, abs=1e-6)
    assert L.ccc_loss(p, y).item() == pytest.approx(1 - expected, abs=1e-6)
    both = L.ccc(torch.stack([p, y], 1), torch.stack([y, y], 1))  # per column
    assert both.tolist() == pytest.approx([expected, 1.0], abs=1e-6)


def test_ccc_is_one_when_perfect_zero_when_constant_and_penalises_a_shifted_mean():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(64, generator=g)
    assert L.ccc(y, y).item() == pytest.approx(1.0, abs=1e-6)
    assert L.ccc(torch.full_like(y, 0.7), y).item() == 0.0
    shifted = y + 2.0
    pearson = torch.corrcoef(torch.stack([shifted, y]))[0, 1].item()
    assert pearson == pytest.approx(1.0, abs=1e-6)  # Pearson does not see the shift
    var = y.var(unbiased=False).item()
    assert L.ccc(shifted, y).item() == pytest.approx(2 * var / (2 * var + 4), abs=1e-5)
    assert L.ccc(shifted, y).item() < 0.5


def test_mse_and_binned_ce_match_hand_computation():
    assert L.mse_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item() == 2.5
    edges = L.uniform_edges(-1.0, 1.0, 4)  # -1, -0.5, 0, 0.5, 1
    assert edges.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    values = torch.tensor([-3.0, -1.0, -0.5, 0.1, 0.99, 1.0, 7.0])
    assert L.bin_index(values, edges).tolist() == [0, 0, 1, 2, 3, 3, 3]
    per_column = L.bin_index(torch.stack([values, -values], 1), torch.stack([edges, edges]))
    assert per_column[:, 1].tolist() == [3, 3, 3, 1, 0, 0, 0]  # 0.5 is an edge: upper bin
    logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    expected = (_ce([0.0, 1.0, 2.0], 2) + _ce([1.0, 1.0, 1.0], 0)) / 2
    assert L.binned_ce_loss(logits, torch.tensor([2, 0])).item() == pytest.approx(expected)


def test_ncce_matches_hand_computation():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # softmax [.5 .5], [.75 .25]
    classes, centroids = torch.tensor([0, 1]), torch.tensor([-1.0, 2.0])
    # Sample 1: E[K] = 0.5; cost 1 + |-1 - 0.5| = 2.5; CE log 2. Sample 2: E[K] = -0.75 + 0.5 =
    # -0.25; cost 1 + |2 + 0.25| = 3.25; CE -log 0.25.
    expected = (2.5 * math.log(2) + 3.25 * -math.log(0.25)) / 2
    assert L.ncce_loss(logits, classes, centroids).item() == pytest.approx(expected, abs=1e-6)
    # A confident right prediction costs ~1 x its (small) cross-entropy; per-column centroids.
    sure = torch.tensor([[[20.0, 0.0]], [[0.0, 20.0]]])  # [N=2, T=1, L=2]
    value = L.ncce_loss(sure, classes[:, None], centroids[None]).item()
    assert value == pytest.approx(-math.log(torch.sigmoid(torch.tensor(20.0)).item()), rel=1e-3)


def test_kmeans_1d_finds_the_groups_and_nearest_centroid_assigns():
    values = torch.tensor([0.0, 0.1, 0.2, 5.0, 5.2, 9.0, 9.1, 9.2, 9.3])
    centroids = L.kmeans_1d(values, k=3)
    assert centroids.tolist() == pytest.approx([0.1, 5.1, 9.15], abs=1e-5)
    assert L.nearest_centroid(torch.tensor([-1.0, 4.0, 8.0]), centroids).tolist() == [0, 1, 2]
    few = L.kmeans_1d(torch.tensor([0.0, 0.0, 1.0, 1.0]), k=5)  # fewer values than classes
    assert len(few) == 5 and set(few.tolist()) == {0.0, 1.0}


def test_composite_loss_is_the_weighted_sum_of_eq_6():
    g = torch.Generator().manual_seed(1)
    y, p = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    logits = torch.randn(8, 2, 4, generator=g)
    bins = torch.randint(4, (8, 2), generator=g)
    centroids = torch.tensor([[-1.0, 0.0, 1.0, 2.0], [0.0, 0.5, 1.0, 1.5]])
    w = {"ccc": 0.5, "mse": 0.25, "ce": 0.25, "ncce": 2.0}
    got = L.composite_loss(w, p, y, logits, bins, logits, bins, centroids)
    want = (
        0.5 * (1 - L.ccc(p, y)).mean()
        + 0.25 * ((p - y) ** 2).mean()
        + 0.25 * L.binned_ce_loss(logits, bins)
        + 2.0 * L.ncce_loss(logits, bins, centroids)
    )
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    only_ccc = L.composite_loss({"ccc": 1.0, "mse": 0, "ce": 0, "ncce": 0}, p, y)  # no logits
    assert only_ccc.item() == pytest.approx(L.ccc_loss(p, y).item())
    assert L.COMPOSITE_WEIGHTS == {"ccc": 0.5, "mse": 0.25, "ce": 0.25, "ncce": 0.0}
    with pytest.raises(ValueError, match="keys"):
        L.composite_loss({"ccc": 1.0}, p, y)
