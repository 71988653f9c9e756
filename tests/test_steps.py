import copy

import pytest
import torch
from omegaconf import OmegaConf

from bmb_stream.method.bank import MemoryBank
from bmb_stream.algorithms.base import Batch
from bmb_stream.algorithms.bmb import BankConfig, BMBConfig, StepContext, bmb_step
from bmb_stream.algorithms.fixmatch import fixmatch_step
from bmb_stream.algorithms.supervised import supervised_step
from bmb_stream.models import build_model

METHOD = OmegaConf.structured(BMBConfig(tau=0.0, bank=BankConfig(features="strong", draw=16)))


def make_batch(seed=0, b=4, u=4):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 0][:b]),
                 *(torch.randn(u, 3, 16, 16, generator=g) for _ in range(3)))


def make_bank(model, seed=0):
    bank = MemoryBank(32, model.feature_dim, 3, beta_put=0.0, beta_get=1.0, seed=seed)
    g = torch.Generator().manual_seed(1)
    bank.put(torch.randn(32, model.feature_dim, generator=g), torch.randint(0, 3, (32,), generator=g))
    return bank


def grads(model):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def run_step(model, method, bank):
    model.zero_grad()
    out = bmb_step(model, make_batch(), StepContext(0, method, bank=bank, nhat=torch.ones(3)))
    out.loss.backward()
    return out, grads(model)


def test_bank_loss_trains_the_balanced_head_only():
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, width=4)
    with_bank = OmegaConf.merge(METHOD, {"lambda_mb": 1.0})
    without = OmegaConf.merge(METHOD, {"lambda_mb": 0.0})
    out_a, g_a = run_step(copy.deepcopy(model), with_bank, make_bank(model))
    out_b, g_b = run_step(copy.deepcopy(model), without, make_bank(model))
    assert out_a.terms["loss_mb"] > 0
    for name in g_a:
        if name.startswith("head_bal"):
            assert not torch.allclose(g_a[name], g_b[name]), name
        else:
            assert torch.allclose(g_a[name], g_b[name], atol=1e-6), name


def test_bmb_total_is_the_sum_of_its_terms():
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, width=4)
    cfg = OmegaConf.merge(METHOD, {"lambda_u": 0.5, "lambda_mb": 0.25})
    out = bmb_step(model, make_batch(), StepContext(0, cfg, bank=make_bank(model), nhat=torch.ones(3)))
    t = {k: float(v) for k, v in out.terms.items()}
    expected = t["loss_l"] + t["loss_l_bal"] + 0.5 * (t["loss_u"] + t["loss_u_bal"]) + 0.25 * t["loss_mb"]
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    # with tau 0 every weak prediction is confident: the counts cover the whole unlabeled batch
    assert int(out.extras["confident_counts"].sum()) == 4


def test_warmup_switches_the_unlabeled_and_bank_terms_off():
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, width=4)
    cfg = OmegaConf.merge(METHOD, {"warmup": 10})
    out = bmb_step(model, make_batch(), StepContext(5, cfg, bank=make_bank(model), nhat=torch.ones(3)))
    assert out.loss.item() == pytest.approx(float(out.terms["loss_l"] + out.terms["loss_l_bal"]), rel=1e-5)
    cfg = OmegaConf.merge(METHOD, {"warmup": 10, "bank_warmup": 0})
    out = bmb_step(model, make_batch(), StepContext(5, cfg, bank=make_bank(model), nhat=torch.ones(3)))
    assert out.loss.item() == pytest.approx(float(out.terms["loss_l"] + out.terms["loss_l_bal"] + out.terms["loss_mb"]), rel=1e-5)


def test_strong_candidates_enter_the_bank_weak_variant_uses_the_weak_view():
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, width=4)
    for features, expected in (("strong", 8), ("weak", 4)):
        bank = MemoryBank(64, model.feature_dim, 3, beta_put=0.0, beta_get=1.0)
        cfg = OmegaConf.merge(METHOD, {"bank": {"features": features}})
        out = bmb_step(model, make_batch(), StepContext(0, cfg, bank=bank, nhat=None))
        assert bank.fill == expected and out.terms["bank_in"] == expected
    # a threshold no prediction reaches admits nothing
    bank = MemoryBank(64, model.feature_dim, 3, beta_put=0.0, beta_get=1.0)
    bmb_step(model, make_batch(), StepContext(0, OmegaConf.merge(METHOD, {"tau": 1.0}), bank=bank))
    assert bank.fill == 0


def test_labeled_images_join_the_bank_with_their_labels_and_no_unlabeled_origin():
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, width=4)
    batch = make_batch()
    bank = MemoryBank(64, model.feature_dim, 3, beta_put=0.0, beta_get=1.0)
    cfg = OmegaConf.merge(METHOD, {"tau": 1.0, "bank": {"features": "weak", "labeled": True}})  # no pseudo-label passes
    out = bmb_step(model, batch, StepContext(0, cfg, bank=bank))
    assert bank.fill == 4 and bank.labels[:4].tolist() == batch.y_labeled.tolist()
    with torch.no_grad():  # the labeled chunk of the step's one forward pass (batch norm sees all four)
        whole = model(torch.cat([batch.x_labeled, batch.u_weak, batch.u_strong1, batch.u_strong2]))
    assert torch.allclose(bank.features[:4], whole[:4], atol=1e-5)
    slots, origin = out.extras["bank_write"]
    assert slots.tolist() == [0, 1, 2, 3] and origin.tolist() == [-1] * 4
    # with confident unlabeled candidates too: labeled first (-1), then the unlabeled samples' indices
    bank = MemoryBank(64, model.feature_dim, 3, beta_put=0.0, beta_get=1.0)
    out = bmb_step(model, batch, StepContext(0, OmegaConf.merge(cfg, {"tau": 0.0}), bank=bank))
    assert bank.fill == 8 and out.extras["bank_write"][1].tolist() == [-1, -1, -1, -1, 0, 1, 2, 3]


def test_monitor_purity_counts_pseudo_labeled_entries_only():
    from bmb_stream.evaluation.monitor import StreamMonitor

    bank = MemoryBank(8, 2, 3, beta_put=0.0, beta_get=1.0)
    monitor = StreamMonitor(3, bank_capacity=8)
    slots, _ = bank.put(torch.zeros(4, 2), torch.tensor([0, 1, 2, 2]))
    truth = torch.tensor([0, 2])  # the unlabeled batch's hidden classes
    monitor.observe({"pseudo_labels": torch.tensor([0, 2]), "mask": torch.tensor([True, True]),
                     "bank_write": (slots, torch.tensor([-1, -1, 0, 1]))}, truth)
    report = monitor.report(bank)
    assert report["bank_labeled"] == 2
    assert report["bank_purity"] == 0.5  # slot 2 holds label 2 for a class-0 image; slot 3 is right


def test_fixmatch_and_supervised_touch_the_standard_head_only():
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, width=4)
    cfg = OmegaConf.create({"tau": 0.0, "lambda_u": 1.0, "warmup": 0})
    for step_fn in (lambda m, b: fixmatch_step(m, b, cfg, 0), supervised_step):
        model.zero_grad()
        step_fn(model, make_batch()).loss.backward()
        assert model.head_bal.weight.grad is None or torch.all(model.head_bal.weight.grad == 0)
        assert model.head_std.weight.grad.abs().sum() > 0
