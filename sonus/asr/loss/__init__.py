"""RNN-Transducer losses.

- :mod:`.rnnt`: the full loss (a drop-in for ``torchaudio.functional.rnnt_loss``) with
  FastEmit, and a plain autograd reference;
- :mod:`.pruned`: the pruned loss of Kuang et al. 2022 (k2/icefall) and its "simple"
  additive-joiner loss;
- :mod:`.lattice`: the recursions and arc occupancies both are built on.

Shapes: B batch, T encoder frames, U target labels, V vocabulary (blank included).
"""

from sonus.asr.loss.lattice import rnnt_lattice
from sonus.asr.loss.pruned import (
    gather_pruned,
    prune_ranges,
    pruned_rnnt_loss,
    rnnt_loss_simple,
)
from sonus.asr.loss.rnnt import Reduction, rnnt_loss, rnnt_loss_reference

__all__ = [
    "Reduction", "gather_pruned", "prune_ranges", "pruned_rnnt_loss", "rnnt_lattice", "rnnt_loss",
    "rnnt_loss_reference", "rnnt_loss_simple",
]  # fmt: skip
