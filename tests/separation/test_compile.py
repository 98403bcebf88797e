"""``training.compile``: the training forward goes through one static torch.compile graph."""

from __future__ import annotations

import torch

from sonus.separation.lightning import (
    SeparationLightning,
    SepOptimConfig,
    SepTrainOptions,
)
from sonus.separation.models import build_model

TINY = {"n_filters": 16, "kernel_size": 16, "bn_channels": 16, "hidden_channels": 32, "skip_channels": 16, "n_blocks": 2, "n_repeats": 1}


def test_short_batches_are_padded_to_the_crop_and_cut_back():
    model = build_model("convtasnet", TINY)
    module = SeparationLightning(model, SepOptimConfig(), SepTrainOptions(compile=True, train_samples=800))
    seen = []

    def spy(mix):
        seen.append(mix.shape[-1])
        return model(mix)

    module._train_forward = spy
    mix = torch.randn(2, 500)
    est = module._train_estimates(mix)
    assert seen == [800] and est.shape == (2, 2, 500)
    assert module._train_estimates(torch.randn(2, 800)).shape == (2, 2, 800) and seen == [800, 800]
    assert module(mix).shape == (2, 2, 500) and seen == [800, 800]  # validation and inference run eager


def test_the_state_dict_holds_the_weights_once():
    for compile in (False, True):
        module = SeparationLightning(build_model("convtasnet", TINY), SepOptimConfig(), SepTrainOptions(compile=compile))
        assert all(k.startswith("model.") for k in module.state_dict()), compile


def test_compiled_training_forward_matches_eager_with_one_graph():
    torch.manual_seed(0)
    model = build_model("convtasnet", TINY)
    module = SeparationLightning(model, SepOptimConfig(), SepTrainOptions(compile=True, train_samples=800))
    torch._dynamo.reset()
    for n in (800, 640, 800):  # a short batch is zero-padded to the crop (as collate pads a batch): no second graph
        mix = torch.randn(2, n)
        eager = model(torch.nn.functional.pad(mix, (0, 800 - n)))[..., :n]
        torch.testing.assert_close(module._train_estimates(mix), eager, rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
