"""A first-pass search bound to the model parts it scores with: encoder frames in, n-best out.

Transducer searches score with the predictor and joiner, CTC searches with the CTC head's
posteriors (``model.ctc_log_probs``). Bound here, both take the same inputs, so the decoder and the streaming decoder
hold one object whatever the strategy::

    state = first.start(B, device)
    state = first.run(enc, lengths, state)  # offline once; streaming once a chunk
    results = first.results(state)

``score`` gives the exact log P(y | x) of given label sequences (the sum over all their
alignments), for hypotheses the search did not score itself (the union second pass).

Shapes: B batch, T encoder frames, H encoder width, U labels, V vocabulary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from sonus.asr.decoding.ctc import CTCSearch
from sonus.asr.decoding.search import TransducerSearch
from sonus.asr.decoding.types import DecodeResult
from sonus.asr.joiner import Joiner
from sonus.asr.loss import rnnt_loss
from sonus.asr.model import TwoPassASR
from sonus.asr.predictor import Predictor
from sonus.text.tokenizer import BLANK

SCORE_CHUNK = 32  # sequences scored at a time: the transducer's joint is (SCORE_CHUNK, T, U+1, V)


class FirstPass(ABC):
    """``start`` a state, ``run`` it over encoder frames, read ``results`` (see the module docstring)."""

    @abstractmethod
    def start(self, batch: int, device: torch.device) -> Any:
        """The search state before the first frame."""

    @abstractmethod
    def run(self, enc: torch.Tensor, lengths: torch.Tensor, state: Any) -> Any:
        """Continue ``state`` over enc (B, T, H), of which the first lengths[b] frames (B,) are valid."""

    @abstractmethod
    def results(self, state: Any) -> list[DecodeResult]:
        """N-best list of every utterance so far, best first."""

    @abstractmethod
    def _score(self, enc: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        """log P(targets[n] | enc[n]) (N,) for N rows; targets (N, U) padded."""

    @torch.no_grad()
    def score(self, enc: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        """Exact log P(y | x) (N,) of targets (N, U) (padded, target_lengths (N,)) given enc (N, T, H)
        with lengths (N,): one row per sequence, in chunks of ``SCORE_CHUNK`` rows; fp32."""
        out = [
            self._score(enc[i : i + SCORE_CHUNK], lengths[i : i + SCORE_CHUNK], targets[i : i + SCORE_CHUNK], target_lengths[i : i + SCORE_CHUNK])
            for i in range(0, enc.shape[0], SCORE_CHUNK)
        ]
        return torch.cat(out) if out else torch.zeros(0, device=enc.device)

    @torch.no_grad()
    def __call__(self, enc: torch.Tensor, lengths: torch.Tensor) -> list[DecodeResult]:
        """Offline: the whole of enc (B, T, H) with lengths (B,)."""
        return self.results(self.run(enc, lengths.to(enc.device), self.start(enc.shape[0], enc.device)))


class TransducerFirstPass(FirstPass):
    def __init__(self, search: TransducerSearch, predictor: Predictor, joiner: Joiner) -> None:
        self.search, self.predictor, self.joiner = search, predictor, joiner

    def start(self, batch: int, device: torch.device) -> Any:
        return self.search.start(self.predictor, self.joiner, batch, device)

    @torch.no_grad()
    def run(self, enc: torch.Tensor, lengths: torch.Tensor, state: Any) -> Any:
        return self.search.run(self.predictor, self.joiner, enc, lengths, state)

    def results(self, state: Any) -> list[DecodeResult]:
        return self.search.results(state)

    def _score(self, enc, lengths, targets, target_lengths):
        logits = self.joiner(enc, self.predictor(targets))  # (N, T, U+1, V)
        return -rnnt_loss(logits, targets.int(), lengths.int(), target_lengths.int(), blank=BLANK, reduction="none")


class CTCFirstPass(FirstPass):
    """A CTC search over the posteriors ``log_probs`` gives: enc (B, T, H) -> (B, T, V) log-probabilities,
    frame by frame (``TwoPassASR.ctc_log_probs``), so a chunk's posteriors do not depend on the next chunk."""

    def __init__(self, search: CTCSearch, log_probs: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.search, self.log_probs = search, log_probs

    def start(self, batch: int, device: torch.device) -> Any:
        return self.search.start(batch, device)

    @torch.no_grad()
    def run(self, enc: torch.Tensor, lengths: torch.Tensor, state: Any) -> Any:
        return self.search.run(self.log_probs(enc), lengths, state)

    def results(self, state: Any) -> list[DecodeResult]:
        return self.search.results(state)

    def _score(self, enc, lengths, targets, target_lengths):
        lp = self.log_probs(enc).transpose(0, 1)  # (T, N, V)
        # -inf where no alignment fits (more labels than frames allow)
        return -F.ctc_loss(lp, targets, lengths, target_lengths, blank=BLANK, reduction="none", zero_infinity=False)


def bind(search: TransducerSearch | CTCSearch, model: TwoPassASR, strategy: str = "") -> FirstPass:
    """``search`` bound to the parts of ``model`` it needs; a clear error when the model lacks them."""
    if isinstance(search, CTCSearch):
        if model.ctc is None:
            raise ValueError(
                f"decoding.strategy={strategy} needs a model with a CTC head; train one with model.loss_weights.ctc > 0"
            )
        return CTCFirstPass(search, model.ctc_log_probs)
    predictor, joiner = model.predictor, model.joiner
    if predictor is None or joiner is None:
        raise ValueError(
            f"decoding.strategy={strategy} needs a transducer (predictor and joiner), which this model has not; "
            "decode it with decoding.strategy=ctc_greedy or ctc_prefix_beam"
        )
    return TransducerFirstPass(search, predictor, joiner)
