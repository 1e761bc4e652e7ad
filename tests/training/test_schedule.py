"""The MLPerf lr schedule against the reference's LRPolicyScheduler, and its use in train()."""

import pytest
import torch

from dlrm.config import preset
from dlrm.data.synthetic import SyntheticConfig, SyntheticData
from dlrm.training.loop import TrainConfig, train
from dlrm.training.optim import HybridOptimizer
from dlrm.training.schedule import MLPerfSchedule, build_schedule


class ReferenceLRPolicy(torch.optim.lr_scheduler._LRScheduler):
    """facebookresearch/dlrm's LRPolicyScheduler (dlrm_s_pytorch.py), copied as is."""

    def __init__(self, optimizer, num_warmup_steps, decay_start_step, num_decay_steps):
        self.num_warmup_steps = num_warmup_steps
        self.decay_start_step = decay_start_step
        self.decay_end_step = decay_start_step + num_decay_steps
        self.num_decay_steps = num_decay_steps
        super().__init__(optimizer)

    def get_lr(self):
        step_count = self._step_count
        if step_count < self.num_warmup_steps:
            scale = 1.0 - (self.num_warmup_steps - step_count) / self.num_warmup_steps
            lr = [base_lr * scale for base_lr in self.base_lrs]
            self.last_lr = lr
        elif self.decay_start_step <= step_count and step_count < self.decay_end_step:
            decayed_steps = step_count - self.decay_start_step
            scale = ((self.num_decay_steps - decayed_steps) / self.num_decay_steps) ** 2
            min_lr = 0.0000001
            lr = [max(min_lr, base_lr * scale) for base_lr in self.base_lrs]
            self.last_lr = lr
        else:
            lr = self.last_lr if self.num_decay_steps > 0 else self.base_lrs
        return lr


def reference_lrs(base, warmup, start, decay, steps):
    """lr used by each optimizer step, as the reference loop applies it."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = ReferenceLRPolicy(opt, warmup, start, decay)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_matches_reference_where_it_is_continuous():
    # decay_start == warmup: the reference's constant-phase quirk does not arise; stop before
    # its post-decay hold.
    base, warmup, decay = 2.0, 10, 25
    ours = MLPerfSchedule(warmup_steps=warmup, decay_start=warmup, decay_steps=decay)
    ref = reference_lrs(base, warmup, warmup, decay, warmup + decay - 1)
    assert [ours.lr(s, base) for s in range(len(ref))] == pytest.approx(ref, rel=1e-12)


def test_phases_by_hand():
    s = MLPerfSchedule(warmup_steps=4, decay_start=10, decay_steps=4, end_lr=0.1)
    lrs = [s.lr(step, 1.0) for step in range(16)]
    assert lrs[:3] == pytest.approx([0.25, 0.5, 0.75])  # t/W for t = 1..3
    assert lrs[3:9] == pytest.approx([1.0] * 6)  # constant, t = 4..9 (reference: 0.75)
    # decay, t = 10..13: end + (1 - end) * ((4 - k)/4)^2 for k = 0..3
    assert lrs[9:13] == pytest.approx([0.1 + 0.9 * ((4 - k) / 4) ** 2 for k in range(4)])
    assert lrs[13:] == pytest.approx([0.1] * 3)  # the end lr
    assert MLPerfSchedule().lr(12345, 0.3) == 0.3  # all zeros: constant


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="decay_start"):
        MLPerfSchedule(warmup_steps=10, decay_start=5, decay_steps=3)
    with pytest.raises(ValueError, match="warmup_steps"):
        MLPerfSchedule(warmup_steps=-1)
    with pytest.raises(ValueError, match="expected one of"):
        build_schedule({"kind": "cosine"})
    with pytest.raises(ValueError, match="lr schedule mlperf"):
        build_schedule({"kind": "mlperf", "warmup": 3})
    assert build_schedule(None) is None and build_schedule({"kind": "constant"}) is None


def test_train_applies_the_schedule_every_step(tmp_path, monkeypatch):
    seen = []
    original = HybridOptimizer.set_lr

    def recording_set_lr(self, dense_lr, sparse_lr=None):
        seen.append((dense_lr, sparse_lr))
        original(self, dense_lr, sparse_lr)

    monkeypatch.setattr(HybridOptimizer, "set_lr", recording_set_lr)
    data = SyntheticData(SyntheticConfig(table_sizes=[50, 20, 30], rows_cap=None,
                                         train_samples=64 * 12, val_samples=256,
                                         test_samples=0))
    model_config = preset("tiny", table_sizes=[50, 20, 30]).to_dict()
    spec = {"kind": "mlperf", "warmup_steps": 3, "decay_start": 5, "decay_steps": 4,
            "end_lr": 0.01}
    config = TrainConfig(batch_size=64, lr=0.2, sparse_lr=0.4, lr_schedule=spec)
    train("dlrm", model_config, data, config, tmp_path / "run")
    schedule = build_schedule(spec)
    assert seen == [pytest.approx((schedule.lr(s, 0.2), schedule.lr(s, 0.4))) for s in range(12)]
