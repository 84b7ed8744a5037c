"""Binary cross-entropy, optionally weighted per body part as in the MURA paper."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from murakit.data.index import ImageRecord


def sample_weights(
    records: Sequence[ImageRecord], train_records: Sequence[ImageRecord], scheme: str
) -> torch.Tensor:
    """Per-image loss weights. "bce": all 1. "weighted-bce": for each body part, counted on
    the training images of that part, w_abnormal = N_normal / N and w_normal = N_abnormal / N,
    so both classes of a part contribute equally."""
    if scheme == "bce":
        return torch.ones(len(records))
    if scheme != "weighted-bce":
        raise ValueError(f"unknown loss {scheme!r}; expected 'bce' or 'weighted-bce'")
    counts = Counter((r.part, r.label) for r in train_records)
    weights = []
    for rec in records:
        normal, abnormal = counts[(rec.part, 0)], counts[(rec.part, 1)]
        total = normal + abnormal
        if total == 0:
            weights.append(1.0)
        else:
            weights.append((normal if rec.label else abnormal) / total)
    return torch.tensor(weights, dtype=torch.float32)


def single_cell_logits(cams: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per cell, the classifier's evidence in that cell times the cell count, plus the bias:
    h*w*(w . F_ij) + b. A CAM cell (w . F_ij + b) scaled up so that one cell's evidence
    counts as much as the whole image's pooled evidence does in the logit. The fracture-cpu
    recipe's figures (box weight 0.1) were measured with this score."""
    h, w = cams.shape[-2:]
    bias = bias.float()
    return (cams.float() - bias) * (h * w) + bias


def box_guidance_loss(
    cams: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Sum over the batch of a per-cell loss that puts CAMs on the truth boxes (after Li et
    al., CVPR 2018, who combine image labels with a few boxes): every cell of a negative image
    is a negative, every cell a box touches in a positive image is a positive, each scored by
    :func:`single_cell_logits`. Cells outside the boxes of a positive image, and positive
    images without boxes, add nothing.

    ``cams`` (N, h, w) as :func:`murakit.model.densenet.logits_and_cams` gives them, ``bias``
    the classifier's; ``masks`` (N, 1, S, S) in [0, 1], the boxes after augmentation."""
    h, w = cams.shape[-2:]
    cells = F.adaptive_max_pool2d(masks.float(), (h, w))[:, 0] > 0.5
    cell_logits = single_cell_logits(cams, bias)
    negatives = (labels < 0.5)[:, None, None].expand_as(cells)
    positives = cells & ~negatives
    target = positives.float()
    chosen = negatives | positives
    losses = F.binary_cross_entropy_with_logits(cell_logits, target, reduction="none")
    per_image = (losses * chosen).sum((1, 2)) / chosen.sum((1, 2)).clamp(min=1)
    return per_image.sum()


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of weighted BCE (callers divide by the image count)."""
    return F.binary_cross_entropy_with_logits(
        logits.float(), labels.float(), weight=weights, reduction="sum"
    )
