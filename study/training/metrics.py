"""Every metric, from positive-class probabilities and labels, through one function."""

from __future__ import annotations

import torch

THRESHOLD = 0.5  # decision rule: predict pneumonia when P(pneumonia) >= 0.5


def auroc(prob: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged); NaN for one class."""
    n = labels.numel()
    n_pos = labels.sum()
    n_neg = n - n_pos
    order = torch.argsort(prob)
    sorted_prob = prob[order]
    _, inverse, counts = torch.unique_consecutive(
        sorted_prob, return_inverse=True, return_counts=True
    )
    # Average rank (1-based) of each group of tied scores.
    ends = torch.cumsum(counts, 0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = mean_rank[inverse]
    pos_rank_sum = (ranks * labels[order].to(torch.float64)).sum()
    u = pos_rank_sum - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def classification_metrics(prob: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return accuracy (%), AUROC, sensitivity and specificity as 0-d tensors (no host sync).

    `prob` and `labels` must both be shaped (N,): a (N, 2) score against (N, 1) labels, the
    homework's bug, is refused instead of broadcast.
    """
    assert prob.dim() == 1 and prob.shape == labels.shape, (prob.shape, labels.shape)
    labels = labels.to(torch.long)
    pred = (prob >= THRESHOLD).to(torch.long)
    correct = (pred == labels).to(torch.float64)
    pos = labels == 1
    neg = ~pos
    values = {
        "accuracy": correct.mean() * 100.0,
        "auroc": auroc(prob.detach().to(torch.float64), labels),
        "sensitivity": correct[pos].mean(),
        "specificity": correct[neg].mean(),
    }
    # A model whose outputs are NaN (training diverged) has no score: NaN, not the 50 % that
    # comparing NaN against the threshold would give. Checked without a host sync.
    broken = torch.isnan(prob).any()
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=prob.device)
    return {k: torch.where(broken, nan, v) for k, v in values.items()}
