"""Divergence stops a run with one line naming the cause; a healthy run is never stopped."""
import math

import pytest

from deepshrink.cli import main
from deepshrink.engine.divergence import DivergenceWatch
from deepshrink.errors import UserError


def test_loss_far_above_chance_stops_the_run_after_the_grace_share():
    watch = DivergenceWatch(total_steps=200)
    for step in range(49):  # inside the first 25% of the budget: no verdict yet
        watch.update(step, loss=24.0, correct=60, seen=128, num_classes=10)
    with pytest.raises(UserError, match="far above chance"):
        watch.update(51, loss=24.0, correct=60, seen=128, num_classes=10)


def test_chance_accuracy_stops_the_run():
    watch = DivergenceWatch(total_steps=100)
    with pytest.raises(UserError, match="at chance"):
        for step in range(100):
            watch.update(step, loss=math.log(10), correct=13, seen=128, num_classes=10)  # ~10%


def test_non_finite_loss_stops_at_once():
    with pytest.raises(UserError, match="loss is nan at step 0"):
        DivergenceWatch(total_steps=1000).update(0, loss=float("nan"), correct=0, seen=1, num_classes=10)


def test_a_learning_run_is_never_stopped():
    watch = DivergenceWatch(total_steps=300)
    for step in range(300):
        watch.update(step, loss=2.0 - step / 300, correct=40 + step // 5, seen=128, num_classes=10)


def test_a_diverging_compress_exits_2_with_one_line_and_writes_no_model(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compress", "--recipe", "bwn-paper", "--model", "lenet300", "--model-args", "input_size=8",
                 "--data", "digits", "--out", str(out), "--set", "train.epochs=3", "--set", "train.lr=10000",
                 "--set", "train.batch_size=16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "training diverged" in err[0] and "train.lr" in err[0]
    assert not (out / "model.dsz").exists()
