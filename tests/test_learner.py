import errno

import pytest
import torch

from bmb_stream.config import compose, typed
from bmb_stream.engine import checkpoint
from bmb_stream.engine.ema import ModelEMA, ema_decay_at
from bmb_stream.engine.learner import Learner, lr_factor
from bmb_stream.algorithms import Batch


def tiny_cfg(*extra):
    return typed(compose(["mode=offline", "model.width=4", "train.batch_labeled=4", "train.batch_unlabeled=4", "method.tau=0.1",
                    "method.bank.capacity=16", "method.bank.draw=8", "train.ema_warmup=true", *extra]))


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g),
                 *(torch.randn(4, 3, 32, 32, generator=g) for _ in range(3)))


LABELED = [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]


def test_checkpoint_round_trip_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    a = Learner(tiny_cfg(), 10, LABELED, torch.device("cpu"))
    for s in range(6):
        a.train_step(batch(s))
    assert a.algorithm.bank.fill > 0 and a.algorithm.estimate.value() is not None
    checkpoint.save_atomic({"learner": a.state_dict()}, tmp_path / "last.pt")
    state = checkpoint.load_checkpoint(tmp_path / "last.pt")  # weights_only=True inside
    torch.manual_seed(123)  # a different process state: the checkpoint must restore it
    b = Learner(tiny_cfg(), 10, LABELED, torch.device("cpu"))
    b.load_state_dict(state["learner"])
    for s in range(6, 9):
        ta, tb = a.train_step(batch(s)), b.train_step(batch(s))
        assert {k: float(v) for k, v in ta.items()} == {k: float(v) for k, v in tb.items()}
    for (n, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), n
    assert torch.equal(a.algorithm.bank.labels[: a.algorithm.bank.fill], b.algorithm.bank.labels[: b.algorithm.bank.fill])
    assert torch.equal(a.algorithm.estimate.value(), b.algorithm.estimate.value())
    assert a.step == b.step == 9 and a.samples_seen == b.samples_seen == 36


def test_weights_follow_the_estimate_and_reset_when_warmup_ends():
    torch.manual_seed(0)
    learner = Learner(tiny_cfg("method.warmup=3"), 10, LABELED, torch.device("cpu"))
    wl, wu = learner.algorithm.class_weights()
    assert torch.allclose(wl, (15 / torch.tensor(LABELED, dtype=torch.float)) ** 1.5)
    assert torch.equal(wu, torch.ones(10))  # no statistic yet
    for s in range(3):
        learner.train_step(batch(s))
    assert learner.algorithm.estimate.steps == 3
    learner.train_step(batch(3))  # step 3 is the first after warm-up: the estimate restarts
    assert learner.algorithm.estimate.steps == 1


def test_weights_off_and_labeled_source_switches():
    learner = Learner(tiny_cfg("method.weights.enabled=false"), 10, LABELED, torch.device("cpu"))
    assert learner.algorithm.class_weights() == (None, None)
    learner = Learner(tiny_cfg("method.weights.unlabeled_source=labeled"), 10, LABELED, torch.device("cpu"))
    wl, wu = learner.algorithm.class_weights()
    assert torch.equal(wl, wu)
    learner.train_step(batch(0))
    assert learner.algorithm.estimate.steps == 1  # Nhat is still estimated: the bank's draw follows it
    assert Learner(tiny_cfg("method.bank.enabled=false"), 10, LABELED, torch.device("cpu")).algorithm.bank is None


def test_reference_weight_decay_shrinks_the_raw_weights():
    torch.manual_seed(0)
    learner = Learner(tiny_cfg("optim.lr=1e-12", "optim.wd_shrink=1000"), 10, LABELED, torch.device("cpu"))
    before = learner.model.head_std.weight.detach().clone()
    learner.train_step(batch(0))
    assert torch.allclose(learner.model.head_std.weight, before * (1 - 1000 * 1e-12), atol=1e-9)


def test_reference_weight_decay_scales_batch_norm_statistics_only_when_asked():
    torch.manual_seed(0)
    stats = {}
    for buffers in ("false", "true"):
        learner = Learner(tiny_cfg("optim.lr=1e-6", "optim.wd_shrink=1000", f"optim.wd_shrink_buffers={buffers}"),
                          10, LABELED, torch.device("cpu"))
        bn = next(m for m in learner.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.momentum = 0.0  # the step itself leaves the running statistics where they are
        learner.train_step(batch(0))
        stats[buffers] = bn.running_var.clone()
    assert torch.equal(stats["false"], torch.ones_like(stats["false"]))
    assert torch.allclose(stats["true"], torch.full_like(stats["true"], 1 - 1000 * 1e-6), rtol=0, atol=1e-7)


def test_ema_decay_warmup_and_update():
    assert ema_decay_at(0, 0.999, True) == pytest.approx(0.1)
    assert ema_decay_at(10_000, 0.999, True) == 0.999 and ema_decay_at(0, 0.999, False) == 0.999
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, 0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.module.weight.fill_(0.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full_like(model.weight, 0.5))


def test_schedules():
    assert lr_factor(0, 100, "cosine") == 1.0
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(100, 100, "fixmatch_cosine") == pytest.approx(0.19509, abs=1e-4)  # cos(7 pi / 16)
    assert lr_factor(50, 100, "constant") == 1.0


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"step": 1}, path)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(checkpoint.CheckpointError, match="no space left on the device"):
        checkpoint.save_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_corrupt_checkpoint_is_named(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="last.pt"):
        checkpoint.load_checkpoint(tmp_path / "last.pt")


def uint8_batch(seed):
    g = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8) for _ in range(4)]
    return Batch(images[0], torch.randint(0, 10, (4,), generator=g), *images[1:])


def test_uint8_batches_are_normalised_on_the_device_as_the_float_pipeline_did():
    """A step on the loaders' uint8 batch equals a step on the same batch normalised beforehand."""
    results = []
    for as_float in (False, True):
        torch.manual_seed(0)
        learner = Learner(tiny_cfg(), 10, LABELED, torch.device("cpu"))
        b = uint8_batch(1)
        if as_float:
            b = Batch(learner.input(b.x_labeled), b.y_labeled, *(learner.input(v) for v in (b.u_weak, b.u_strong1, b.u_strong2)))
            assert b.u_weak.dtype == torch.float32 and float(b.u_weak.abs().max()) < 5  # normalised
        results.append({k: float(v) for k, v in learner.train_step(b).items()})
    assert results[0] == results[1]


@pytest.mark.parametrize("option", ["train.channels_last=true", "train.compile=true"])
def test_channels_last_and_compile_train_as_the_default_does(option):
    """Same losses and weights after 3 steps (to float rounding), same checkpoint keys."""
    runs = []
    for opts in ([], [option]):
        torch.manual_seed(0)
        learner = Learner(tiny_cfg(*opts), 10, LABELED, torch.device("cpu"))
        losses = [float(learner.train_step(uint8_batch(s))["loss"]) for s in range(3)]
        runs.append((losses, learner.model.state_dict(), learner))
    (base_losses, base_state, _), (losses, state, learner) = runs
    assert losses == pytest.approx(base_losses, rel=1e-5)
    assert list(state) == list(base_state)  # a checkpoint loads either way
    for name, value in state.items():
        assert torch.allclose(value.float(), base_state[name].float(), atol=1e-4), name
    if option == "train.channels_last=true":
        conv = next(p for p in learner.model.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last)
