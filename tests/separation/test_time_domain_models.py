"""Conv-TasNet, DPRNN and SepFormer: shapes for any length, checkpoint round trip through the
registry, gradients, causality, autocast, dual-path segmentation and config checks."""

from __future__ import annotations

import pytest
import torch

from sonus.separation.models import build_model, model_spec
from sonus.separation.models.blocks import overlap_add, segment

# Tiny configs: a second or less per test on one CPU thread.
SMALL = {
    "convtasnet": {"n_filters": 16, "kernel_size": 4, "bn_channels": 8, "hidden_channels": 16, "skip_channels": 8,
                   "conv_kernel": 3, "n_blocks": 3, "n_repeats": 2},
    "dprnn": {"n_filters": 16, "kernel_size": 4, "bn_channels": 8, "hidden_size": 8, "chunk_size": 8, "num_layers": 2},
    "sepformer": {"n_filters": 16, "kernel_size": 4, "d_model": 16, "nhead": 2, "d_ffn": 32, "num_layers": 1,
                  "num_blocks": 2, "chunk_size": 8},
}  # fmt: skip
VARIANTS = [
    ("convtasnet", {}),
    ("convtasnet", {"norm": "BN", "mask_act": "softmax"}),
    ("convtasnet", {"norm": "cLN", "causal": True, "mask_act": "relu"}),
    ("dprnn", {}),
    ("dprnn", {"rnn_type": "GRU", "bidirectional": False, "kernel_size": 2}),
    ("sepformer", {}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in extra.items()) or 'base'}" for name, extra in VARIANTS]


def _model(name: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, {**SMALL[name], **extra})


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=IDS)
def test_output_is_one_waveform_per_source_for_any_length(name, extra):
    model = _model(name, **extra).eval()
    # 1 and 5 samples: less than one chunk; 161: several chunks; 2 * 3 * 67 = 402 odd-sized multiples.
    for T in (1, 5, 16, 161, 402):
        with torch.no_grad():
            out = model(torch.randn(2, T))
        assert out.shape == (2, 2, T), (name, T, out.shape)
        assert torch.isfinite(out).all(), (name, T)


@pytest.mark.parametrize("name", list(SMALL))
def test_three_sources(name):
    model = _model(name, n_src=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 123))
    assert out.shape == (2, 3, 123), out.shape
    assert not torch.allclose(out[:, 0], out[:, 1]) and not torch.allclose(out[:, 1], out[:, 2])


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=IDS)
def test_checkpoint_round_trip_through_the_registry(name, extra, tmp_path):
    model = _model(name, **extra)
    model.train()
    model(torch.randn(3, 200))  # moves BatchNorm running statistics away from their initial values
    model.eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    spec_name, params = model_spec(model)
    assert spec_name == name and params == {**params, **SMALL[name], **extra}, (spec_name, params)

    torch.manual_seed(1)  # a different initialisation: only the loaded weights can make outputs agree
    rebuilt = build_model(spec_name, params).eval()
    mix = torch.randn(2, 173)
    with torch.no_grad():
        expected, before = model(mix), rebuilt(mix)
        assert not torch.allclose(before, expected)
        rebuilt.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
        assert rebuilt.cfg == model.cfg
        torch.testing.assert_close(rebuilt(mix), expected, rtol=0, atol=0)


@pytest.mark.parametrize(("name", "extra"), VARIANTS, ids=IDS)
def test_every_parameter_gets_a_gradient(name, extra):
    """The encoder included; an unused parameter would also break DistributedDataParallel."""
    model = _model(name, **extra).train()
    mix = torch.randn(2, 150)
    model(mix).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert model.encoder.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(SMALL))
def test_runs_under_bf16_autocast(name):
    model = _model(name).train()
    mix = torch.randn(2, 137)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(mix)
    assert out.shape == (2, 2, 137) and torch.isfinite(out.float()).all(), (out.shape, out.dtype)
    out.float().pow(2).mean().backward()
    assert model.encoder.conv.weight.grad is not None


def test_causal_convtasnet_does_not_look_past_its_encoder_window():
    """Changing the input from sample t0 on leaves every output sample whose encoder frames end
    before t0 unchanged: latency is one window (kernel_size samples), nothing more. The same
    model with gLN does change earlier samples, so the check can fail."""
    T, t0, L = 240, 131, 4
    hop = L // 2
    mix = torch.randn(1, T)
    changed = mix.clone()
    changed[:, t0:] = torch.randn(1, T - t0)
    # output sample u is made from frames starting at most at floor(u / hop) * hop, which read up to L - 1 more samples
    last_safe = max(u for u in range(T) if (u // hop) * hop + L - 1 < t0)
    for norm, causal in (("cLN", True), ("gLN", False)):
        model = _model("convtasnet", norm=norm, causal=causal).eval()
        with torch.no_grad():
            diff = (model(mix) - model(changed)).abs().amax(dim=(0, 1))  # (T,)
        if causal:
            assert diff[: last_safe + 1].max() < 1e-6, diff[: last_safe + 1].max()
            assert diff[t0:].max() > 1e-4, diff[t0:].max()
        else:
            assert diff[: last_safe + 1].max() > 1e-4, diff[: last_safe + 1].max()


@pytest.mark.parametrize(("T", "chunk", "hop"), [(1, 8, 4), (7, 8, 4), (8, 8, 4), (37, 8, 4), (37, 5, 2), (20, 6, 6), (3, 3, 1)])
def test_segmentation_then_overlap_add_gives_back_the_frames(T, chunk, hop):
    x = torch.randn(2, 3, T)
    chunks = segment(x, chunk, hop)  # (B, D, K, S)
    assert chunks.shape[:3] == (2, 3, chunk), chunks.shape
    torch.testing.assert_close(overlap_add(chunks, hop, T), x, rtol=1e-6, atol=1e-6)
    # chunk s starts at frame s * hop - (chunk - hop); frames outside 0..T-1 are zeros
    padded = torch.nn.functional.pad(x, (chunk - hop, chunk * 2))
    for s in range(chunks.shape[-1]):
        assert torch.equal(chunks[..., s], padded[..., s * hop : s * hop + chunk]), s
    # every frame is held by the same number of chunks (2 with hop = chunk / 2), the edges included
    if chunk % hop == 0:
        starts = [s * hop - (chunk - hop) for s in range(chunks.shape[-1])]
        held = [sum(a <= t < a + chunk for a in starts) for t in range(T)]
        assert held == [chunk // hop] * T, held


@pytest.mark.parametrize("name", list(SMALL))
def test_unknown_config_key_is_named(name):
    with pytest.raises(ValueError, match="n_speakers"):
        build_model(name, {**SMALL[name], "n_speakers": 2})


@pytest.mark.parametrize(
    ("name", "params", "shown"),
    [
        ("convtasnet", {"norm": "LN"}, "'LN'"),
        ("convtasnet", {"causal": True}, "norm='gLN'"),
        ("convtasnet", {"n_blocks": 0}, "'n_blocks': 0"),
        ("dprnn", {"rnn_type": "lstm"}, "'lstm'"),
        ("dprnn", {"chunk_size": 1}, "chunk_size=1"),
        ("sepformer", {"d_model": 30, "nhead": 8}, "d_model=30"),
        ("sepformer", {"mask_act": "tanh"}, "'tanh'"),
    ],
)
def test_bad_config_values_are_rejected_with_the_values(name, params, shown):
    with pytest.raises(ValueError) as err:
        build_model(name, params)
    assert shown in str(err.value), str(err.value)
