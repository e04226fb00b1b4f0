"""The self-supervised losses of the paper, as pure functions of tensors (imports only torch).

Equation numbers refer to "Multi-Task Multi-Modal Self-Supervised Learning for Facial Expression
Recognition" (ConCluGen, CVPRW 2024), except the negative-free pretext losses, which cite their
own papers: BYOL (Grill et al., NeurIPS 2020) and DINO (Caron et al., ICCV 2021), the
modality-pairwise loss of MPUC (Franceschini et al., "Multimodal Emotion Recognition with
Modality-Pairwise Unsupervised Contrastive Loss", ICPR 2022, Eq. 1-2), and the downstream losses
on continuous labels, which cite SS-VAERR (Jegorova et al., "SS-VAERR: Self-Supervised Apparent
Emotional Reaction Recognition from Video", Eq. 1-6). Similarities
and cross-entropies are computed in float32 whatever the autocast dtype of the inputs, so bf16
training does not round the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

MARGIN = 0.001  # delta of Eq. 3-4 and Eq. 10
TEMPERATURE = 0.07  # tau of Eq. 1 (authors' simclr_temperature), also MPUC's (Sec. III-D)
DINO_STUDENT_TEMP = 0.1  # tau_s (DINO Sec. 3.1 and its code's default)
DINO_TEACHER_TEMP = 0.04  # tau_t (DINO's code default; the paper warms it up to 0.07)
DINO_CENTER_MOMENTUM = 0.9  # m of DINO Eq. 4
CONTINUOUS_BINS = 20  # SS-VAERR Sec. III-D: 20 uniform bins (CE), k = 20 k-means centroids (nCCE)
# SS-VAERR's best configuration (SEWA, Table III, kept for its augmentation study, Sec. V-D).
COMPOSITE_WEIGHTS = {"ccc": 0.5, "mse": 0.25, "ce": 0.25, "ncce": 0.0}


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


def pairwise_contrastive_loss(
    anchor: torch.Tensor, other: torch.Tensor, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """MPUC's L^{m,n} (Franceschini et al. Eq. 1): anchors from modality m, positive and
    negatives from modality n only, so L^{m,n} != L^{n,m} in general.

    ``anchor`` and ``other`` are the projections of modalities m and n, [V, B, d] (V temporal
    views of the same B clips, V = 1 or 2; [B, d] is one view); sim = cosine / tau.

    - One view: Eq. 1 as printed, averaged over the B anchors instead of summed:
      -log(exp(s_ii) / sum_{j != i} exp(s_ij)) with s_ij = sim(z_i^m, z_j^n) / tau; the
      denominator leaves the positive out (the indicator 1[i != j]), so B >= 2.
    - Two views, as the authors' code (SupCon-style, positives from the other view): the 2B
      anchors are m's rows of both views; the positive of view v of clip i is n's row of clip i
      in the other view; n's row of clip i in the same view is dropped from numerator and
      denominator, so the denominator runs over the other 2B - 1 rows of n, the positive
      included; each anchor's -log term is divided by 2 (their code divides the positives'
      log-likelihood by their count + 1) and the terms are averaged over the 2B anchors.
    """
    z_m, z_n = (x if x.dim() == 3 else x[None] for x in (anchor, other))
    views, b = z_m.shape[:2]
    if z_n.shape[:2] != (views, b) or views not in (1, 2) or views * b < 2:
        shapes = f"{tuple(anchor.shape)}, {tuple(other.shape)}"
        raise ValueError(f"need [V, B, d] views of the same clips, V 1 or 2, V B >= 2: {shapes}")
    z_m = F.normalize(z_m.reshape(views * b, -1).float(), dim=1)
    z_n = F.normalize(z_n.reshape(views * b, -1).float(), dim=1)
    s = (z_m @ z_n.T) / temperature
    own = torch.eye(len(s), dtype=torch.bool, device=s.device)  # the same clip in the same view
    others = s.masked_fill(own, float("-inf"))
    if views == 1:
        return (torch.logsumexp(others, dim=1) - s.diagonal()).mean()
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(s.device)
    return F.cross_entropy(others, target) / 2


def mpuc_loss(
    projections: Sequence[torch.Tensor], temperature: float = TEMPERATURE
) -> torch.Tensor:
    """MPUC's final loss (Franceschini et al. Eq. 2): :func:`pairwise_contrastive_loss` L^{m,n}
    averaged over the |M|(|M| - 1) ordered pairs of distinct modalities (both (m, n) and
    (n, m): the loss is asymmetric). ``projections``: one per modality, each [V, B, d]."""
    if len(projections) < 2:
        raise ValueError(f"MPUC needs at least 2 modalities, got {len(projections)}")
    terms = [
        pairwise_contrastive_loss(p, q, temperature)
        for i, p in enumerate(projections)
        for j, q in enumerate(projections)
        if i != j
    ]
    return sum(terms) / len(terms)


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
    targets = dino_targets(teacher, center, teacher_temp)
    logs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    terms = [
        -(pt * ls).sum(-1).mean()
        for i, pt in enumerate(targets)
        for j, ls in enumerate(logs)
        if i != j
    ]
    return sum(terms) / len(terms)


def dino_targets(
    teacher: Sequence[torch.Tensor], center: torch.Tensor, teacher_temp: float = DINO_TEACHER_TEMP
) -> list[torch.Tensor]:
    """DINO Eq. 1 for the teacher: P_t = softmax((g_t - c) / tau_t) of each view's [B, K]
    logits, centred and sharpened, detached (DINO's stop-gradient), in float32."""
    return [F.softmax((t.detach().float() - center) / teacher_temp, dim=-1) for t in teacher]


def dino_center(
    center: torch.Tensor, teacher: Sequence[torch.Tensor], momentum: float = DINO_CENTER_MOMENTUM
) -> torch.Tensor:
    """DINO Eq. 4: the new centre ``c <- m c + (1 - m) mean(g_t)``, the mean of the teacher's
    logits over the batch of every view given to the teacher. Returns a new tensor."""
    batch = torch.cat([t.detach().float() for t in teacher]).mean(0, keepdim=True)
    return momentum * center + (1 - momentum) * batch


# --- continuous labels (SS-VAERR Eq. 1-6) ------------------------------------------------------
# Targets are [N] or [N, T] (T target columns, each a label such as sentiment); class logits are
# [N, L] or [N, T, L] over L bins; every loss is averaged over samples and columns.


def ccc(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SS-VAERR Eq. 1, Lin's concordance correlation coefficient per column (over dim 0):
    2 cov(Y, Y^) / (var Y + var Y^ + (mu_Y - mu_Y^)^2), population moments. The paper prints
    the standard deviations and a sum of the means; Lin's variances and difference are meant
    (its text: "mu and sigma are their mean and variance"; a sum would not make CCC(Y, Y) = 1).
    1 for a perfect prediction, 0 for a constant one (0 too where both are constant); unlike
    Pearson's r it drops when the prediction's mean or scale is off."""
    pred, target = pred.float(), target.float()
    mp, mt = pred.mean(0), target.mean(0)
    cov = ((pred - mp) * (target - mt)).mean(0)
    den = pred.var(0, unbiased=False) + target.var(0, unbiased=False) + (mp - mt) ** 2
    return 2 * cov / den.clamp(min=1e-12)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SS-VAERR's regression loss 1 - CCC (Eq. 1) of the batch, averaged over columns."""
    return (1 - ccc(pred, target)).mean()


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SS-VAERR Eq. 2: E((Y - Y^)^2) over every element."""
    return (pred.float() - target.float()).pow(2).mean()


def uniform_edges(low: float, high: float, bins: int = CONTINUOUS_BINS) -> torch.Tensor:
    """The ``bins + 1`` uniformly spaced bin boundaries of [low, high] (SS-VAERR Sec. III-D, as
    its ref. [2])."""
    return torch.linspace(low, high, bins + 1)


def bin_index(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """The bin of each value for boundaries ``edges`` [L + 1] (per column: [T, L + 1] for
    values [N, T]), in 0 .. L - 1; values outside [edges[0], edges[-1]] go to the end bins."""
    inner = edges[..., 1:-1].contiguous()
    if values.ndim == 1:
        return torch.bucketize(values.float().contiguous(), inner, right=True)
    columns = zip(values.float().T, inner, strict=True)
    return torch.stack([torch.bucketize(v.contiguous(), e, right=True) for v, e in columns], 1)


def kmeans_1d(values: torch.Tensor, k: int = CONTINUOUS_BINS, iters: int = 100) -> torch.Tensor:
    """Lloyd's k-means of scalar ``values`` [N]: the k centroids [k], ascending. Starts at the
    values nearest the quantiles (i + 1/2) / k, so it is deterministic; an emptied cluster keeps
    its centroid, so with fewer distinct values than k some centroids repeat (a class no target
    then takes)."""
    x = values.detach().float().flatten()
    levels = (torch.arange(k, dtype=torch.float32) + 0.5) / k
    c = torch.quantile(x, levels, interpolation="nearest")
    for _ in range(iters):
        label = nearest_centroid(x, c)
        counts = torch.bincount(label, minlength=k)
        sums = torch.zeros(k).index_add_(0, label, x)
        new = torch.where(counts > 0, sums / counts.clamp(min=1), c)
        if torch.equal(new, c):
            break
        c = new
    return c.sort().values


def nearest_centroid(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The class of each value: its nearest centroid (the first of equals), per column
    (values [N, T], centroids [T, L]) or for one column (values [N], centroids [L])."""
    return (values.float()[..., None] - centroids).abs().argmin(-1)


def binned_ce_loss(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """SS-VAERR Eq. 3: the cross-entropy -sum_l Y_l log softmax(Y^)_l of the one-hot bin
    ``bins`` (long, [N] or [N, T]) against the ``logits`` over the L bins."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), bins.reshape(-1))


def ncce_loss(logits: torch.Tensor, classes: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """SS-VAERR Eq. 4-5, the cost-sensitive cross-entropy: each sample's cross-entropy
    -sum_l Y_l log Y^_l times its cost C_norm = 1 + ||sum_l K_l (Y_l - Y^_l)||_2, with Y the
    one-hot k-means class ``classes`` of the target, Y^ = softmax(``logits``) and K_l the
    centroid of class l (``centroids`` [L], or [T, L] per column). For scalar centroids the cost
    is 1 + |K_y - E_Y^[K]|: a prediction whose mass lies on far classes costs more. Averaged
    over samples (the 1/F of Eq. 4) and columns; the cost is not detached (Eq. 5 as printed)."""
    logp = F.log_softmax(logits.float(), -1)
    centroids = centroids.float().expand_as(logp)
    true = centroids.gather(-1, classes[..., None]).squeeze(-1)
    cost = 1 + (true - (logp.exp() * centroids).sum(-1)).abs()
    ce = -logp.gather(-1, classes[..., None]).squeeze(-1)
    return (cost * ce).mean()


def composite_loss(
    weights: dict[str, float],
    pred: torch.Tensor,
    target: torch.Tensor,
    bin_logits: torch.Tensor | None = None,
    bins: torch.Tensor | None = None,
    class_logits: torch.Tensor | None = None,
    classes: torch.Tensor | None = None,
    centroids: torch.Tensor | None = None,
) -> torch.Tensor:
    """SS-VAERR Eq. 6, L = w_ccc (1 - CCC) + w_mse MSE + w_ce CE + w_nCCE nCCE, the paper's
    "CCC" term being its regression loss 1 - CCC. ``weights`` has the keys ``ccc``, ``mse``,
    ``ce``, ``ncce``; a term of weight 0 is not computed (its inputs may be None)."""
    terms = {
        "ccc": lambda: ccc_loss(pred, target),
        "mse": lambda: mse_loss(pred, target),
        "ce": lambda: binned_ce_loss(bin_logits, bins),
        "ncce": lambda: ncce_loss(class_logits, classes, centroids),
    }
    if set(weights) != set(terms):
        raise ValueError(f"composite loss weights need the keys {sorted(terms)}, got {weights}")
    return sum(w * terms[k]() for k, w in weights.items() if w)
