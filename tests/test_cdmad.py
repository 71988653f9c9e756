"""CDMAD's formulas on hand-made tensors (../shared/docs/baselines.md, section 4)."""

import pytest
import torch

from bmb_stream.algorithms import Setup, build_algorithm
from bmb_stream.algorithms.base import Batch
from bmb_stream.algorithms.cdmad import bias_image, cdmad_step, refined_pseudo_labels, training_bias
from bmb_stream.models import build_model


def make_batch(seed=0, b=4, u=6):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, 3, 32, 32, generator=g), torch.arange(b) % 3,
                 *(torch.randn(u, 3, 32, 32, generator=g) for _ in range(3)))


def cdmad(total_steps=100, **cfg):
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, width=4)
    setup = Setup(3, torch.tensor([100.0, 30.0, 10.0]), model.feature_dim, torch.device("cpu"),
                  total_steps=total_steps)
    return build_algorithm({"name": "cdmad", **cfg}, setup), model


def test_equal_bias_logits_change_nothing():
    z = torch.randn(8, 5)
    plain = refined_pseudo_labels(z, None, 0.5)
    shifted = refined_pseudo_labels(z, torch.full((5,), 3.7), 0.5)
    assert torch.allclose(plain[0], shifted[0], atol=1e-6)
    assert torch.equal(plain[1], shifted[1]) and torch.equal(plain[2], shifted[2])


def test_bias_equal_to_the_logits_gives_a_uniform_target():
    z = torch.randn(1, 4)
    probs, _, _ = refined_pseudo_labels(z, z[0], 0.0)
    assert torch.allclose(probs, torch.full((1, 4), 0.25))


def test_a_log_prior_bias_is_logit_adjustment():
    prior = torch.tensor([0.6, 0.3, 0.1])
    z = torch.randn(50, 3)
    _, labels, _ = refined_pseudo_labels(z, prior.log() + 2.0, 0.0)
    assert torch.equal(labels, (z - prior.log()).argmax(1))


def test_the_bias_input_is_ones_of_one_image_and_eval_mode_gives_it_twice():
    x = torch.randn(7, 3, 32, 32)
    image = bias_image(x)
    assert image.shape == (1, 3, 32, 32) and torch.equal(image, torch.ones(1, 3, 32, 32))
    algorithm, model = cdmad()
    model.eval()
    with torch.no_grad():
        first, second = algorithm.test_logits(model, x), algorithm.test_logits(model, x[:3])
        bias = model.head_std(model(image))[0]
    assert torch.allclose(first["rule"][:3], second["rule"], atol=1e-5)
    assert torch.allclose(first["rule"], first["plain"] - bias, atol=1e-5)
    assert torch.allclose(first["plain"], model.head_std(model(x)), atol=1e-5)


def test_before_the_debias_start_targets_are_fixmatchs_soft_ones_and_tau_zero_keeps_every_sample():
    algorithm, model = cdmad(total_steps=100, debias_start=0.5)
    batch = make_batch()
    out = algorithm.step(model, batch, 10)  # progress 0.1 < 0.5
    assert float(out.terms["mask"]) == 1.0
    with torch.no_grad():
        from bmb_stream.algorithms.base import forward_all

        _, f_w, _ = forward_all(model, batch)  # after the step's own forward: batch-norm buffers moved, not the weights
        weak = model.head_std(f_w)
    assert torch.equal(out.extras["pseudo_labels"], weak.argmax(1))
    late = algorithm.step(model, batch, 60)
    assert float(late.terms["mask"]) == 1.0


def test_after_the_start_the_bias_of_the_raw_weights_in_train_mode_is_subtracted():
    algorithm, model = cdmad(total_steps=100)
    batch = make_batch()
    reference = build_model("small_cnn", 3, width=4)
    reference.load_state_dict(model.state_dict())
    out = algorithm.step(model, batch, 50)  # progress 0.5 >= 0.2
    with torch.no_grad():  # the same two forward passes, in train mode: the bias image alone, then the batch
        bias = reference.head_std(reference(torch.ones(1, 3, 32, 32)))[0]
        weak = reference.head_std(reference(torch.cat([batch.x_labeled, batch.u_weak, batch.u_strong1,
                                                       batch.u_strong2]))[4:10])
    assert torch.equal(out.extras["pseudo_labels"], (weak - bias).argmax(1))
    for name, buffer in model.state_dict().items():  # the bias pass updated the running statistics too
        assert torch.allclose(buffer.float(), reference.state_dict()[name].float()), name


class FeatureSpy(torch.nn.Module):
    """The classifier, keeping the gradient of the last features it gave with grad."""

    def __init__(self, classifier):
        super().__init__()
        self.inner, self.head_std, self.features = classifier, classifier.head_std, None

    def forward(self, x):
        f = self.inner(x)
        if f.requires_grad:
            f.retain_grad()
            self.features = f
        return f


def test_no_gradient_flows_through_the_bias_or_the_weak_view():
    algorithm, model = cdmad(total_steps=100, debias_start=0.0)
    spy, batch = FeatureSpy(model), make_batch()
    out = cdmad_step(spy, batch, algorithm.cfg, 0, debias=True)
    out.loss.backward()
    grad = spy.features.grad  # rows: 4 labeled, 6 weak, 12 strong
    assert torch.all(grad[4:10] == 0) and grad[:4].abs().sum() > 0 and grad[10:].abs().sum() > 0
    assert not out.extras["pseudo_labels"].requires_grad


@pytest.mark.parametrize("soft", [True, False])
def test_soft_and_hard_targets_with_a_threshold(soft):
    algorithm, model = cdmad(total_steps=100, tau=0.95, soft_targets=soft)
    out = algorithm.step(model, make_batch(), 0)
    assert float(out.terms["mask"]) < 1.0  # an untrained model is rarely 95% sure
    assert out.loss.item() == pytest.approx(float(out.terms["loss_l"] + out.terms["loss_u"]), rel=1e-5)


def test_the_bias_in_eval_mode_uses_and_keeps_the_running_statistics():
    algorithm, model = cdmad(total_steps=100, bias_batch_norm="running")
    batch = make_batch()
    reference = build_model("small_cnn", 3, width=4)
    reference.load_state_dict(model.state_dict())
    out = algorithm.step(model, batch, 50)
    with torch.no_grad():
        bias = reference.eval().head_std(reference(torch.ones(1, 3, 32, 32)))[0]
        reference.train()
        weak = reference.head_std(reference(torch.cat([batch.x_labeled, batch.u_weak, batch.u_strong1,
                                                       batch.u_strong2]))[4:10])
    assert torch.equal(out.extras["pseudo_labels"], (weak - bias).argmax(1))
    assert model.training
    for name, buffer in model.state_dict().items():  # the batch's pass alone moved the running statistics
        assert torch.allclose(buffer.float(), reference.state_dict()[name].float()), name


def test_the_bias_value_sets_every_entry_of_the_image_in_training_and_at_test():
    x = torch.randn(5, 3, 32, 32)
    assert torch.equal(bias_image(x, 0.0), torch.zeros(1, 3, 32, 32))
    algorithm, model = cdmad(bias_value=0.0)
    model.eval()
    with torch.no_grad():
        logits = algorithm.test_logits(model, x)
        bias = model.head_std(model(torch.zeros(1, 3, 32, 32)))[0]
        ones = model.head_std(model(torch.ones(1, 3, 32, 32)))[0]
    assert torch.allclose(logits["rule"], logits["plain"] - bias, atol=1e-5)
    assert not torch.allclose(bias, ones, atol=1e-3)  # the value reaches the network
    assert torch.allclose(training_bias(model, x, "running", 0.0), bias, atol=1e-5)
