"""A first-pass search bound to the model parts it scores with: encoder frames in, n-best out.

Transducer searches score with the predictor and joiner, CTC searches with the CTC head's
posteriors (``model.ctc_log_probs``). Bound here, both take the same inputs, so the decoder and the streaming decoder
hold one object whatever the strategy::

    state = first.start(B, device)
    state = first.run(enc, lengths, state)  # offline once; streaming once a chunk
    results = first.results(state)

Shapes: B batch, T encoder frames, H encoder width, V vocabulary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from sonus.asr.decoding.ctc import CTCSearch
from sonus.asr.decoding.search import TransducerSearch
from sonus.asr.decoding.types import DecodeResult
from sonus.asr.joiner import Joiner
from sonus.asr.model import TwoPassASR
from sonus.asr.predictor import Predictor


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
