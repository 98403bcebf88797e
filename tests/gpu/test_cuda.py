"""The CUDA paths: losses, training steps, decoding and streaming, the separation models, the
codec, and `sonus train` through Lightning on a GPU, each against the CPU where that is exact.

Skipped without a CUDA device (CI has none); run on a GPU machine with
``python -m pytest -m gpu tests``. Equality with the CPU is checked in fp32 with TF32 off;
bf16 autocast is checked for what it promises (finite, learning, fp32 losses).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sonus.asr.config import TransducerLossConfig
from sonus.asr.decoding import Decoder
from sonus.asr.loss import prune_ranges, pruned_rnnt_loss, rnnt_loss, rnnt_loss_simple
from sonus.asr.model import TwoPassASR
from tests.asr.test_model import small_config
from tests.asr.test_streaming import OPTIONS, sharp_model, stream
from tests.separation.test_spmamba import SMALL as SPMAMBA
from tests.separation.test_time_domain_models import SMALL as TIME_DOMAIN

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 is fp32 here; training with ``training.tf32=true`` turns it on for the process."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def _loss_inputs(B=3, T=20, U=6, V=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, U + 1, V, generator=g)
    targets = torch.randint(1, V, (B, U), generator=g, dtype=torch.int32)
    T_b = torch.tensor([T, T - 3, T - 7], dtype=torch.int32)[:B]
    U_b = torch.tensor([U, U - 2, 1], dtype=torch.int32)[:B]
    return logits, targets, T_b, U_b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fastemit", [0.0, 0.01])
def test_rnnt_loss_on_cuda_equals_cpu(dtype, fastemit):
    logits, targets, T_b, U_b = _loss_inputs()
    x_cpu = logits.detach().to(dtype).requires_grad_()  # detach: a leaf of its own, also where .to() is a no-op
    x_gpu = logits.detach().to(dtype).to(CUDA).requires_grad_()
    want = rnnt_loss(x_cpu, targets, T_b, U_b, reduction="none", fastemit_lambda=fastemit)
    got = rnnt_loss(x_gpu, targets.to(CUDA), T_b.to(CUDA), U_b.to(CUDA), reduction="none", fastemit_lambda=fastemit)
    assert got.dtype == torch.float32 and got.device.type == CUDA.type
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    w = torch.tensor([1.0, 0.5, 2.0])
    (want * w).sum().backward()
    (got * w.to(CUDA)).sum().backward()
    assert x_gpu.grad.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, rtol=tol, atol=tol)


def test_pruned_loss_on_cuda_equals_cpu():
    B, T, U, V, S = 3, 30, 8, 16, 4
    g = torch.Generator().manual_seed(1)
    am, lm = torch.randn(B, T, V, generator=g), torch.randn(B, U + 1, V, generator=g)
    targets = torch.randint(1, V, (B, U), generator=g)
    T_b, U_b = torch.tensor([T, 25, 12]), torch.tensor([U, 5, 3])
    pruned = torch.randn(B, T, S, V, generator=g)
    out = {}
    for dev in ("cpu", "cuda"):
        a, lm_, p = (x.detach().to(dev).requires_grad_() for x in (am, lm, pruned))  # new leaves on each device
        args = (targets.to(dev), T_b.to(dev), U_b.to(dev))
        simple, occ = rnnt_loss_simple(a, lm_, *args)
        ranges = prune_ranges(occ, T_b.to(dev), U_b.to(dev), S)
        loss = pruned_rnnt_loss(p, targets.to(dev), ranges, T_b.to(dev), U_b.to(dev))
        (simple + loss).backward()
        out[dev] = [t.detach().cpu() for t in (simple, loss, ranges, a.grad, lm_.grad, p.grad)]
    for name, c, gpu in zip(("simple", "pruned", "ranges", "d_am", "d_lm", "d_logits"), out["cpu"], out["cuda"]):
        torch.testing.assert_close(gpu, c, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(("B", "T", "W", "pruned"), [(3, 40, 9, False), (2, 300, 200, False), (4, 250, 5, True), (1, 1, 1, False)])
def test_triton_lattice_equals_the_torch_loop(B, T, W, pruned):
    """The frame loops as one Triton kernel: alpha, beta and the likelihood equal the torch
    loop's (rows wider than a warp, windows that shift, one-frame lattices)."""
    from sonus.asr.loss import lattice_triton
    from sonus.asr.loss.lattice import rnnt_lattice

    assert lattice_triton.available(CUDA), "Triton should come with PyTorch's CUDA build"
    g = torch.Generator().manual_seed(T)
    blank = torch.randn(B, T, W, generator=g, dtype=torch.float64).log_softmax(-1).to(CUDA)
    label = torch.randn(B, T, W, generator=g, dtype=torch.float64).log_softmax(-1).to(CUDA)
    T_b = torch.tensor([T, max(1, T - 7), max(1, T // 2), 1][:B], device=CUDA)
    if pruned:  # windows of W that climb by 0..W-1 a frame, up to U
        U = 3 * T // 4
        steps = torch.randint(0, 2, (B, T), generator=g).cumsum(1).clamp(max=U - W + 1).to(CUDA)
        starts = steps - steps[:, :1]
        U_b = (starts.gather(1, (T_b - 1)[:, None])[:, 0] + W - 1).clamp(max=U)
    else:
        starts, U_b = None, torch.tensor([W - 1, max(0, W - 3), W // 2, 0][:B], device=CUDA)
    want = rnnt_lattice(blank, label, T_b, U_b, starts, backend="torch")
    got = rnnt_lattice(blank, label, T_b, U_b, starts, backend="triton")
    assert torch.isfinite(want[2]).all(), want[2]
    for name, a, b in zip(("alpha", "beta", "log_like"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-9, equal_nan=True, msg=lambda m, n=name: f"{n}: {m}")


def _batch(vocab, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    wave = torch.randn(B, 16000, generator=g) * 0.1
    wl = torch.tensor([16000, 12000, 8000][:B])
    targets = torch.randint(1, vocab, (B, 6), generator=g)
    tl = torch.tensor([6, 4, 2][:B])
    return wave, wl, targets, tl


@pytest.mark.parametrize("loss", ["full", "pruned"])
def test_two_pass_losses_on_cuda_equal_cpu_and_a_bf16_step_learns(loss):
    vocab = 10
    torch.manual_seed(0)
    cfg = replace(small_config(vocab), rnnt_loss=TransducerLossConfig(kind=loss, warmup_steps=0))
    cpu = TwoPassASR(cfg, specaug=None, gain=None).eval()
    gpu = TwoPassASR(cfg, specaug=None, gain=None).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(CUDA)
    wave, wl, targets, tl = _batch(vocab)
    want = cpu.losses(cpu.encode(wave, wl), targets, tl, step=10)
    got = gpu.losses(gpu.encode(wave.to(CUDA), wl.to(CUDA)), targets.to(CUDA), tl.to(CUDA), step=10)
    for name in ("rnnt", "las"):
        torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name), rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")

    gpu.train()
    opt = torch.optim.Adam(gpu.parameters(), 3e-3, fused=True)
    batch = (wave.to(CUDA), wl.to(CUDA), targets.to(CUDA), tl.to(CUDA))
    totals = []
    for step in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = gpu.losses(gpu.encode(*batch[:2]), *batch[2:], step=step)
        assert out.rnnt.dtype == torch.float32  # the transducer loss leaves autocast
        total = out.rnnt + out.las
        opt.zero_grad(set_to_none=True)
        total.backward()
        assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)
        opt.step()
        totals.append(float(total))
    assert totals[-1] < 0.5 * totals[0], totals


@pytest.fixture(scope="module")
def models():
    """test_streaming's random model with sharp posteriors, on the CPU and a copy on CUDA."""
    cpu, tok, wave, lengths = sharp_model()
    gpu = TwoPassASR(cpu.cfg, specaug=None, gain=None).eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.to(CUDA), tok, wave, lengths


STRATEGIES = {k: OPTIONS[k] for k in ("greedy", "modified_beam", "beam", "ctc_prefix_beam", "beam+union")}


def _texts(results):
    return [[h.text for h in r.nbest] for r in results]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_decoding_on_cuda_equals_cpu_and_streams_like_offline(models, strategy):
    cpu, gpu, tok, wave, lengths = models
    opts = STRATEGIES[strategy]
    with torch.no_grad():
        c_first, c_final = Decoder(cpu, tok, opts).decode(wave, lengths)
        g_first, g_final = Decoder(gpu, tok, opts).decode(wave.to(CUDA), lengths.to(CUDA))
    assert any(h.tokens for r in c_first for h in r.nbest), "the test model emits nothing"
    assert _texts(g_first) == _texts(c_first)
    assert _texts(g_final) == _texts(c_final)
    for got, want in zip((g_first, g_final), (c_first, c_final)):
        assert [h.score for r in got for h in r.nbest] == pytest.approx([h.score for r in want for h in r.nbest], rel=1e-4, abs=1e-4)
    # streamed on the GPU in 160 ms chunks: what the GPU gives offline
    from sonus.asr import StreamingDecoder

    _, s_first, s_final = stream(StreamingDecoder(gpu, tok, opts), wave[:1].to(CUDA), lengths[:1].to(CUDA), 2560)
    assert _texts(s_first) == _texts(g_first[:1]) and _texts(s_final) == _texts(g_final[:1])
    assert [h.score for h in s_final[0].nbest] == pytest.approx([h.score for h in g_final[0].nbest], rel=1e-4, abs=1e-4)


def test_streamed_conformer_on_cuda_equals_offline(models):
    """As tests/asr/test_streaming.py's Conformer test, on the GPU: the chunked Conformer's
    cached attention and convolution state give the offline tokens."""
    from sonus.asr import StreamingDecoder
    from sonus.nn import conformer

    cpu, _, tok, wave, lengths = models
    torch.manual_seed(1)
    cfg = conformer.ConformerConfig(d_model=32, layers=2, heads=2, conv_kernel=5, subsampling_channels=8, chunk_size=4, left_chunks=2)
    m = TwoPassASR(cpu.cfg, specaug=None, gain=None)
    m.load_state_dict(cpu.state_dict())
    m.encoder = conformer.ConformerEncoder(cpu.cfg.n_mels, cfg)
    m.eval().to(CUDA)
    with torch.no_grad():
        m.joiner.enc_proj.weight.div_(30.0)
        m.joiner.out.bias[0] -= 4.0
    wave, lengths = wave[:1].to(CUDA), lengths[:1].to(CUDA)
    for strategy in ("greedy", "modified_beam"):
        with torch.no_grad():
            off_first, off_final = Decoder(m, tok, STRATEGIES[strategy]).decode(wave, lengths)
        _, first, final = stream(StreamingDecoder(m, tok, STRATEGIES[strategy]), wave, lengths, 1000)
        for a, b in ((first, off_first), (final, off_final)):
            assert [h.tokens for h in a[0].nbest] == [h.tokens for h in b[0].nbest]
            assert [h.score for h in a[0].nbest] == pytest.approx([h.score for h in b[0].nbest], rel=1e-4, abs=1e-4)
        assert len(off_first[0].best.tokens) > 3


SEPARATORS = {**TIME_DOMAIN, "spmamba": SPMAMBA}  # the CPU tests' tiny configs


@pytest.mark.parametrize("name", list(SEPARATORS))
def test_separators_on_cuda_equal_cpu_and_train_under_bf16(name):
    from sonus.separation.loss import pit
    from sonus.separation.models import build_model

    torch.manual_seed(0)
    cpu = build_model(name, SEPARATORS[name]).eval()
    gpu = build_model(name, SEPARATORS[name]).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(CUDA)
    x = torch.randn(2, 1601)
    with torch.no_grad():
        want, got = cpu(x), gpu(x.to(CUDA))
    assert got.shape == (2, 2, 1601)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-4)

    gpu.train()
    opt = torch.optim.Adam(gpu.parameters(), 3e-3)
    g = torch.Generator().manual_seed(1)
    refs = torch.randn(2, 2, 1601, generator=g).to(CUDA)
    mix = refs.sum(1)
    losses = []
    for _ in range(15):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            est = gpu(mix)
        res = pit(est.float(), refs)  # the losses in fp32, as training computes them
        loss = -res.metric.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses


def test_codec_on_cuda_equals_cpu():
    from sonus.codec.model import SpeechTokenizer
    from tests.codec.test_model import tiny

    torch.manual_seed(0)
    cpu = SpeechTokenizer(tiny()).eval()
    gpu = SpeechTokenizer(tiny()).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(CUDA)
    x = 0.1 * torch.randn(2, 4000)
    with torch.no_grad():
        c_codes, g_codes = cpu.encode(x), gpu.encode(x.to(CUDA))
        assert (g_codes.cpu() == c_codes).float().mean() > 0.99  # nearest codewords: a near-tie may flip
        y = gpu.decode(c_codes.to(CUDA), length=4000)
        torch.testing.assert_close(y.cpu(), cpu.decode(c_codes, length=4000), rtol=1e-3, atol=1e-4)


def test_sonus_train_on_the_gpu_in_bf16(tmp_path):
    """The real path: `sonus train` with Lightning on the GPU, bf16-mixed and TF32, then decoding."""
    from sonus.asr.infer import run_decode
    from sonus.asr.model import load_model
    from sonus.asr.train import train
    from sonus.cli import compose
    from sonus.data.recipes.feature_synth import prepare_feature_synth
    from tests.asr.test_features import SMALL
    from tests.asr.test_train import _scalars

    corpus = tmp_path / "features"
    prepare_feature_synth(corpus, train_size=300, dev_size=40, test_size=40, dim=37, seed=0)
    out = tmp_path / "exp"
    over = [o for o in SMALL if not o.startswith("training.precision")]
    cfg = compose("train", ["experiment=conformer_transducer_features", f"data.root={corpus}", f"training.output_dir={out}",
                            *over, "training.accelerator=gpu", "training.precision=bf16-mixed", "training.tf32=true"])  # fmt: skip
    train(cfg)
    val = _scalars(out / "tensorboard")
    assert val["val/loss_rnnt"][-1] < 0.3 * val["val/loss_rnnt"][0], val["val/loss_rnnt"]
    model, _ = load_model(out / "last.ckpt")
    assert next(model.parameters()).device.type == "cpu"  # checkpoints load anywhere
    dec = compose("decode", [f"model.checkpoint={out / 'last.ckpt'}", f"data.test_manifest={corpus / 'test.jsonl'}",
                             f"output_path={tmp_path / 'd.jsonl'}", "decoding.beam_size=4"])  # fmt: skip
    summary = run_decode("rnnt", dec)
    assert summary.first_pass.cer < 0.3, summary.first_pass


def test_sonus_train_separation_on_the_gpu(tmp_path):
    from sonus.cli import main
    from tests.data.polsess_fixture import make_mini_polsess
    from tests.separation.test_train import _train_args

    root = make_mini_polsess(tmp_path / "polsess", n_per_split=8, seconds=1.0)
    out = tmp_path / "exp"
    args = _train_args(root, out, 3) + ["training.accelerator=gpu", "training.precision=bf16-mixed"]
    assert main(args) == 0
    assert (out / "best.ckpt").is_file() and (out / "last.ckpt").is_file()
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(v.device.type == "cpu" for v in ckpt["state_dict"].values())
