"""The self-supervised losses of the paper, as pure functions of tensors (imports only torch).

Equation numbers refer to "Multi-Task Multi-Modal Self-Supervised Learning for Facial Expression
Recognition" (ConCluGen, CVPRW 2024), except the negative-free pretext losses, which cite their
own papers: BYOL (Grill et al., NeurIPS 2020) and DINO (Caron et al., ICCV 2021). Similarities
and cross-entropies are computed in float32 whatever the autocast dtype of the inputs, so bf16
training does not round the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

MARGIN = 0.001  # delta of Eq. 3-4 and Eq. 10
TEMPERATURE = 0.07  # tau of Eq. 1 (authors' simclr_temperature)
DINO_STUDENT_TEMP = 0.1  # tau_s (DINO Sec. 3.1 and its code's default)
DINO_TEACHER_TEMP = 0.04  # tau_t (DINO's code default; the paper warms it up to 0.07)
DINO_CENTER_MOMENTUM = 0.9  # m of DINO Eq. 4


def mms_loss(p: torch.Tensor, q: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """Masked Margin Softmax between two modalities, Eq. 2-4.

    ``p`` and ``q`` are [N, d] L2-normalised projections of the same N samples, so ``p @ q.T`` is
    the cosine similarity matrix (no temperature, as in the authors' code). The margin ``delta``
    is subtracted on the diagonal (the true pairs); the loss is the cross-entropy over rows
    (Eq. 3: retrieve q_i from p_i) plus over columns (Eq. 4: retrieve p_j from q_j).
    Swapping ``p`` and ``q`` transposes the matrix, so the loss is symmetric.
    """
    s = p.float() @ q.float().T
    s = s - margin * torch.eye(s.shape[0], device=s.device, dtype=s.dtype)
    target = torch.arange(s.shape[0], device=s.device)
    return F.cross_entropy(s, target) + F.cross_entropy(s.T, target)


def modality_pairs(n: int) -> list[tuple[int, int]]:
    """The pairs MMS is summed over: a ring (v,a), (a,t), (t,v) for 3 modalities, one for 2."""
    if n == 2:
        return [(0, 1)]
    if n == 3:
        return [(0, 1), (1, 2), (2, 0)]
    raise ValueError(f"MMS needs 2 or 3 modalities, got {n}")


def multimodal_mms_loss(
    projections: Sequence[torch.Tensor], margin: float = MARGIN
) -> torch.Tensor:
    """Eq. 5: the sum of :func:`mms_loss` over the modality pairs of :func:`modality_pairs`.

    ``projections`` are in modality order (video, audio, text), each [N, d] and L2-normalised.
    """
    return sum(
        mms_loss(projections[i], projections[j], margin)
        for i, j in modality_pairs(len(projections))
    )


def info_nce_loss(
    p1: torch.Tensor, p2: torch.Tensor, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """Instance-level InfoNCE / NT-Xent, Eq. 1 (SimCLR form, as the authors' simclr_loss).

    ``p1`` and ``p2`` are [B, d] projections of two augmented views of the same B videos. Each of
    the 2B embeddings is an anchor; its positive is the other view of the same video and the
    denominator runs over the other 2B - 1 embeddings (``1[k != i]``); sim = cosine / tau.
    """
    z = F.normalize(torch.cat([p1, p2]).float(), dim=1)
    s = (z @ z.T) / temperature
    s = s.masked_fill(torch.eye(s.shape[0], dtype=torch.bool, device=s.device), float("-inf"))
    b = p1.shape[0]
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(s.device)
    return F.cross_entropy(s, target)


def reconstruction_loss(
    reconstructions: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Eq. 6-7: the MSE between each modality's decoded representation and its input feature,
    summed over modalities (``nn.MSELoss`` per modality, mean over elements)."""
    return sum(
        F.mse_loss(r.float(), t.float()) for r, t in zip(reconstructions, targets, strict=True)
    )


def kmeans_cosine(
    x: torch.Tensor,
    k: int = 8,
    generator: torch.Generator | None = None,
    iters: int = 100,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K-means with cosine assignment (Eq. 9), as ``fast_pytorch_kmeans.KMeans(mode='cosine')``.

    Initial centroids are ``k`` distinct data points drawn with ``generator`` (deterministic given
    its state); a point joins the centroid of highest cosine similarity; a centroid is the plain
    (unnormalised) mean of its points; iteration stops when the centroids move less than ``tol``
    (squared) or after ``iters`` rounds. An emptied cluster is re-seeded with the point that fits
    its own centroid worst (the authors' library would leave a zero centroid). Returns
    (centroids [k, d], labels [n]); ``k`` is capped at the number of points.
    """
    x = x.detach().float()
    n = x.shape[0]
    k = min(k, n)
    init = torch.randperm(n, generator=generator)[:k].to(x.device)
    c = x[init].clone()
    xn = F.normalize(x, dim=1)
    for _ in range(iters):
        sim = xn @ F.normalize(c, dim=1).T
        labels = sim.argmax(1)
        onehot = F.one_hot(labels, k).to(x.dtype)
        counts = onehot.sum(0)
        new = (onehot.T @ x) / counts.clamp(min=1)[:, None]
        # Re-seed empty clusters with the worst-fitting points, without a host sync.
        empty = counts == 0
        worst = sim.gather(1, labels[:, None]).squeeze(1).argsort()
        rank = (empty.cumsum(0) - 1).clamp(min=0, max=n - 1)
        new = torch.where(empty[:, None], x[worst[rank]], new)
        shift = (new - c).pow(2).sum()
        c = new
        if shift <= tol:
            break
    labels = (xn @ F.normalize(c, dim=1).T).argmax(1)
    return c, labels


def fuse(cluster_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 8: the multi-modal representation R = mean of the modalities' cluster-head outputs."""
    return torch.stack(list(cluster_outputs)).mean(0)


def centroid_loss(
    fused: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, margin: float = MARGIN
) -> torch.Tensor:
    """Eq. 10: cross-entropy of the logits R·Cᵀ against the k-means assignment, with the margin
    delta subtracted from the assigned centroid's logit (authors' ``nce=1`` branch)."""
    s = fused.float() @ centroids.float().T
    s = s - margin * F.one_hot(labels, s.shape[1]).to(s.dtype)
    return F.cross_entropy(s, labels)


def clustering_loss(
    cluster_outputs: Sequence[torch.Tensor],
    queue: torch.Tensor | None = None,
    k: int = 8,
    margin: float = MARGIN,
    generator: torch.Generator | None = None,
    iters: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-modal clustering loss, Eq. 8-10.

    Fuses the modalities' cluster-head outputs (Eq. 8), runs :func:`kmeans_cosine` from scratch
    over the detached ``queue`` of past fused vectors (the last batches, oldest first) plus the
    current batch (Eq. 9, as the authors did every step), and returns the :func:`centroid_loss`
    of the current batch against its assignment (Eq. 10) together with the detached fused batch,
    which the caller pushes onto its FIFO queue.
    """
    fused = fuse(cluster_outputs)
    current = fused.detach().float()
    pool = current if queue is None or len(queue) == 0 else torch.cat([queue.float(), current])
    centroids, labels = kmeans_cosine(pool, k, generator, iters)
    loss = centroid_loss(fused, centroids, labels[-fused.shape[0] :], margin)
    return loss, current


def byol_regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL Eq. 2, per sample: the squared distance of the L2-normalised online prediction ``p``
    and target projection ``z``, ``||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)``. ``z`` is detached
    (BYOL's stop-gradient: the target is never trained by the loss)."""
    return 2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=-1)


def byol_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
) -> torch.Tensor:
    """BYOL Eq. 3, the symmetrised loss L + L~, averaged over the batch: the online predictions
    ``p1``, ``p2`` [B, d] of views 1 and 2 regress the target projections ``z2``, ``z1`` of the
    other view (:func:`byol_regression`)."""
    return (byol_regression(p1, z2) + byol_regression(p2, z1)).mean()


def dino_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = DINO_STUDENT_TEMP,
    teacher_temp: float = DINO_TEACHER_TEMP,
) -> torch.Tensor:
    """DINO Eq. 1-3: the cross-entropy H(P_t, P_s) = -sum_k P_t log P_s between the teacher's
    distribution of one view, P_t = softmax((g_t - c) / tau_t) (centred by ``center`` and
    sharpened by a temperature below the student's), and the student's of every other view,
    P_s = softmax(g_s / tau_s); averaged over the batch and over those (view, other view) pairs,
    as DINO's ``DINOLoss``. ``student``, ``teacher``: per view, [B, K] logits (with only the two
    global views, the student's views are the teacher's). The teacher side is detached (DINO's
    stop-gradient)."""
    targets = [F.softmax((t.detach().float() - center) / teacher_temp, dim=-1) for t in teacher]
    logs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    terms = [
        -(pt * ls).sum(-1).mean()
        for i, pt in enumerate(targets)
        for j, ls in enumerate(logs)
        if i != j
    ]
    return sum(terms) / len(terms)


def dino_center(
    center: torch.Tensor, teacher: Sequence[torch.Tensor], momentum: float = DINO_CENTER_MOMENTUM
) -> torch.Tensor:
    """DINO Eq. 4: the new centre ``c <- m c + (1 - m) mean(g_t)``, the mean of the teacher's
    logits over the batch of every view given to the teacher. Returns a new tensor."""
    batch = torch.cat([t.detach().float() for t in teacher]).mean(0, keepdim=True)
    return momentum * center + (1 - momentum) * batch
