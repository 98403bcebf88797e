"""SPMamba through the registry: shapes for any length, save -> rebuild -> same output,
gradient routing, scale equivariance, batch independence and bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from sonus.separation.models import build_model, model_spec
from sonus.separation.models.spmamba import SPMambaConfig

SMALL = {"n_fft": 32, "stride": 8, "emb_dim": 8, "emb_ks": 3, "emb_hs": 2, "n_layers": 2, "d_state": 4, "d_conv": 3,
         "expand": 2, "attn_n_head": 2, "attn_approx_qk_dim": 16}  # fmt: skip


def _model(**over):
    torch.manual_seed(0)
    return build_model("spmamba", {**SMALL, **over}).eval()


@pytest.mark.parametrize("T", [1, 7, 8, 101, 256])
def test_output_is_one_waveform_per_source_of_exactly_the_input_length(T):
    model = _model()
    with torch.no_grad():
        y = model(torch.randn(2, T))
    assert y.shape == (2, 2, T) and y.dtype == torch.float32, (y.shape, y.dtype)
    assert torch.isfinite(y).all()


def test_three_sources_unit_hop_unfolding_and_a_sparse_stft():
    model = _model(n_src=3, emb_ks=2, emb_hs=1, n_layers=1, stride=24)
    with torch.no_grad():
        y = model(torch.randn(1, 99))
    assert y.shape == (1, 3, 99), y.shape


def test_save_rebuild_load_gives_the_same_output(tmp_path):
    model = _model()
    x = torch.randn(2, 150)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    name, params = model_spec(model)
    assert name == "spmamba" and params["emb_ks"] == 3, (name, params)
    torch.manual_seed(1)  # a different initialisation, so the weights must come from the file
    again = build_model(name, params).eval()
    again.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_gradients_reach_every_parameter_and_the_first_conv():
    model = _model().train()
    model(torch.randn(2, 120)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert model.conv.weight.grad.abs().sum() > 0


def test_scale_equivariant_and_batch_items_independent():
    model = _model()
    x = torch.randn(3, 130)
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(model(5.0 * x), 5.0 * y, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model(x[1:2]), y[1:2], rtol=1e-4, atol=1e-5)


def test_runs_under_bf16_autocast():
    model = _model()
    x = torch.randn(2, 200)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
    assert y.shape == ref.shape and y.dtype == torch.float32 and torch.isfinite(y).all(), (y.shape, y.dtype)
    assert (y - ref).norm() < 0.1 * ref.norm(), ((y - ref).norm(), ref.norm())


def test_bad_input_and_config_name_the_values():
    with pytest.raises(ValueError, match=r"stride=256, n_fft=256"):
        SPMambaConfig(stride=256)
    with pytest.raises(ValueError, match="emb_dim 10 is not divisible by attn_n_head 4"):
        SPMambaConfig(emb_dim=10)
    with pytest.raises(ValueError, match="'n_layers': 0"):
        SPMambaConfig(n_layers=0)
    with pytest.raises(ValueError, match=r"\(2, 1, 50\)"):
        _model()(torch.randn(2, 1, 50))
