import numpy as np
import pytest
import torch
from reference_dlrm import ReferenceDLRM, random_reference_batch

from dlrm.cli import main
from dlrm.compat import load_reference_checkpoint, sparse_from_reference
from dlrm.training.checkpoint import load_model
from dlrm.training.optim import build_optimizer

SIZES = [13, 7, 29, 5]


def make_reference(self_interaction=False):
    np.random.seed(0)
    torch.manual_seed(0)
    top_in = 8 + (5 * 6 // 2 if self_interaction else 5 * 4 // 2)
    return ReferenceDLRM(SIZES, 8, [6, 16, 8], [top_in, 12, 1], self_interaction)


def save_like_reference(model, path):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.save({"epoch": 0, "nepochs": 1, "nbatches": 100, "nbatches_test": 10, "iter": 50,
                "state_dict": model.state_dict(), "train_acc": np.float64(0.78),
                "train_loss": np.float32(0.46), "test_acc": np.float64(0.79),
                "opt_state_dict": opt.state_dict()}, path)


@pytest.mark.parametrize("self_interaction", [False, True])
def test_reference_checkpoint_loads_to_equal_probabilities(tmp_path, self_interaction):
    ref = make_reference(self_interaction)
    path = tmp_path / "ref.pt"
    save_like_reference(ref, path)
    # Plain weights_only loading refuses the NumPy scalars; ours allows exactly those.
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        torch.load(path, weights_only=True)
    model = load_reference_checkpoint(path)
    assert model.config.interaction_self is self_interaction
    assert model.config.table_sizes == SIZES and model.config.bottom_mlp == [6, 16, 8]
    dense, lS_o, lS_i = random_reference_batch(SIZES, 11, 6, seed=3)
    with torch.no_grad():
        expected = ref(dense, lS_o, lS_i).squeeze(1)
        ours = torch.sigmoid(model(dense, sparse_from_reference(lS_o, lS_i)))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_one_sgd_step_matches_reference(tmp_path):
    ref = make_reference()
    path = tmp_path / "ref.pt"
    save_like_reference(ref, path)
    model = load_reference_checkpoint(path)
    model.train()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ours_opt = build_optimizer(model, "sgd", lr=0.1)
    loss_fn = torch.nn.BCELoss()
    for step in range(3):
        dense, lS_o, lS_i = random_reference_batch(SIZES, 16, 6, seed=10 + step)
        labels = (torch.rand(16, generator=torch.Generator().manual_seed(step)) < 0.3).float()
        ref_opt.zero_grad()
        loss_fn(ref(dense, lS_o, lS_i).squeeze(1), labels).backward()
        ref_opt.step()
        ours_opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(
            model(dense, sparse_from_reference(lS_o, lS_i)), labels).backward()
        ours_opt.step()
    fused = torch.cat([t.weight for t in ref.emb_l])
    torch.testing.assert_close(model.embeddings.weight, fused, rtol=0, atol=2e-6)
    for ours, theirs in zip(model.top_mlp.linears(), [m for m in ref.top_l
                                                      if isinstance(m, torch.nn.Linear)]):
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=2e-6)


def test_convert_reference_command(tmp_path, capsys):
    ref = make_reference()
    save_like_reference(ref, tmp_path / "ref.pt")
    assert main(["convert-reference", "--checkpoint", str(tmp_path / "ref.pt"), "--out",
                 str(tmp_path / "ours.pt")]) == 0
    model, ckpt = load_model(tmp_path / "ours.pt")
    assert ckpt["converted_from"].endswith("ref.pt")
    dense, lS_o, lS_i = random_reference_batch(SIZES, 5, 6, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(model(dense, sparse_from_reference(lS_o, lS_i))),
                                   ref(dense, lS_o, lS_i).squeeze(1), rtol=0, atol=1e-5)


def test_not_a_reference_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a reference DLRM checkpoint"):
        load_reference_checkpoint(tmp_path / "x.pt")
