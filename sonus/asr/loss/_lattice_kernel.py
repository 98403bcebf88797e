"""The Triton kernel of :mod:`sonus.asr.loss.lattice_triton`, in a module of its own: it
imports Triton, which only CUDA machines have, and is imported on first use there."""

import triton
import triton.language as tl


@triton.jit
def logaddexp(a, b):
    hi = tl.maximum(a, b)
    lo = tl.minimum(a, b)
    return tl.where(hi == float("-inf"), hi, hi + tl.log(1.0 + tl.exp(lo - hi)))


@triton.jit
def row(v, add_ptr, post_ptr, max_ptr, out_ptr, at, w, inside, HAS_MAX: tl.constexpr):
    """One frame: ``out[at + w] = logcumsumexp(max(v, m) + add) + post`` over the row."""
    if HAS_MAX:
        v = tl.maximum(v, tl.load(max_ptr + at + w, mask=inside, other=float("-inf")))
    v = v + tl.load(add_ptr + at + w, mask=inside, other=float("-inf"))
    v = tl.associative_scan(v, 0, logaddexp)
    v = v + tl.load(post_ptr + at + w, mask=inside, other=0.0)
    tl.store(out_ptr + at + w, v, mask=inside)


@triton.jit
def frames(add_ptr, post_ptr, max_ptr, src_ptr, out_ptr, T, W,
           HAS_MAX: tl.constexpr, HAS_SRC: tl.constexpr, REVERSE: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """One utterance's rows, frame by frame: see ``lattice.scan_frames``."""
    b = tl.program_id(0).to(tl.int64)
    w = tl.arange(0, BLOCK)
    inside = w < W
    base = b * T * W
    src_base = b * (T - 1) * W
    # the first frame: forward starts from 0 (the start node is in ``add``), reverse from -inf
    first = T - 1 if REVERSE else 0
    v = tl.full([BLOCK], float("-inf") if REVERSE else 0.0, tl.float64)
    row(v, add_ptr, post_ptr, max_ptr, out_ptr, base + first * W, w, inside, HAS_MAX)
    for i in range(1, T):
        tl.debug_barrier()  # the previous row is in memory for every thread: it is gathered
        t = T - 1 - i if REVERSE else i
        t_prev = t + 1 if REVERSE else t - 1
        idx = w
        if HAS_SRC:  # frame t_src's window shift: src[t_src] = w + shift (forward and reverse alike)
            t_src = t if REVERSE else t - 1
            idx = tl.load(src_ptr + src_base + t_src * W + w, mask=inside, other=0)
        v = tl.load(out_ptr + base + t_prev * W + idx, mask=inside, other=float("-inf"))
        row(v, add_ptr, post_ptr, max_ptr, out_ptr, base + t * W, w, inside, HAS_MAX)
