"""Loss-curve plotting from real TensorBoard event files, and the unigram baseline."""
import math

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from megatiny.eval.run_report import plot_loss_curves, read_scalars, unigram_cross_entropy


def test_read_scalars_and_plot(tmp_path):
    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in range(1, 11):
        writer.add_scalar("train/loss", 5.0 / step, step)
        writer.add_scalar("train/lr", 1e-3, step)
    writer.add_scalar("valid/loss", 1.5, 10)
    writer.close()
    scalars = read_scalars(tmp_path)
    assert sorted(scalars) == ["train/loss", "train/lr", "valid/loss"]
    assert scalars["train/loss"].steps.tolist() == list(range(1, 11))
    assert scalars["train/loss"].values[-1] == pytest.approx(0.5)
    png = plot_loss_curves(scalars, tmp_path / "loss.png", baseline=3.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_scalars_without_events_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_scalars(tmp_path)


def test_unigram_cross_entropy_matches_hand_computation():
    train = np.array([0, 0, 1, 2])
    evaluation = np.array([0, 1])
    # add-one smoothing over vocab 4: p = (3, 2, 2, 1) / 8
    expected = -(math.log(3 / 8) + math.log(2 / 8)) / 2
    assert unigram_cross_entropy(train, evaluation, vocab_size=4) == pytest.approx(expected)
    uniform = unigram_cross_entropy(np.arange(4), np.arange(4), vocab_size=4, smoothing=0.0)
    assert uniform == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="vocab_size"):
        unigram_cross_entropy(np.array([7]), np.array([0]), vocab_size=4)
