"""evaluate(): top-1/top-5 and loss against an independent computation."""
import numpy as np
import pytest
import torch
from torch import nn

from deepshrink.engine import evaluate, topk_correct


class FixedLogits(nn.Module):
    """Returns pre-set logits batch by batch, so the expected accuracy can be computed by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.scale = nn.Parameter(torch.ones(()))
        self.offset = 0

    def forward(self, x):
        out = self.logits[self.offset:self.offset + len(x)] * self.scale
        self.offset += len(x)
        return out


def _reference(logits, labels, k):
    order = np.argsort(-logits, axis=1, kind="stable")
    return 100.0 * np.mean([labels[i] in order[i, :k] for i in range(len(labels))])


@pytest.mark.parametrize("classes", [10, 3])
def test_top1_top5_and_loss_match_an_independent_computation(classes):
    generator = torch.Generator().manual_seed(classes)
    logits = torch.randn(70, classes, generator=generator)
    labels = torch.randint(0, classes, (70,), generator=generator)
    data = [(torch.zeros(n, 2), labels[s:s + n]) for s, n in ((0, 32), (32, 32), (64, 6))]
    model = FixedLogits(logits).train()
    metrics = evaluate(model, data)
    assert metrics["n"] == 70
    assert metrics["top1"] == pytest.approx(_reference(logits.numpy(), labels.numpy(), 1))
    # top-5 on 3 classes clamps k to 3: every sample counts as a hit
    assert metrics["top5"] == pytest.approx(_reference(logits.numpy(), labels.numpy(), min(5, classes)))
    if classes == 3:
        assert metrics["top5"] == 100.0
    log_probs = logits - logits.logsumexp(1, keepdim=True)
    assert metrics["loss"] == pytest.approx(float(-log_probs[torch.arange(70), labels].mean()), rel=1e-5)
    assert not model.training  # evaluated (and left) in eval mode


def test_topk_correct_counts_hits_within_k():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, (1, 2, 5)) == [1, 1, 3]  # k=5 clamps to 3 classes


def test_eval_mode_changes_batchnorm_behaviour():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3))
    inputs, labels = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model.eval()(inputs), labels).item()
    model.train()
    assert evaluate(model, [(inputs, labels)])["loss"] == pytest.approx(expected, rel=1e-6)
