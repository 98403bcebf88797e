"""Decoding: an options dataclass and small strategy objects (greedy, beam, rescoring).

First pass (``DecodingOptions.strategy``), each a :class:`TransducerSearch` batched over utterances:

    greedy         GreedySearch: label-looping, up to ``max_symbols_per_frame`` labels a frame
    modified_beam  ModifiedBeamSearch: beam ``beam_size``, at most one label a frame
    beam           BeamSearch: time-synchronous beam, up to ``max_symbols_per_frame`` labels a frame

Second pass (``second_pass``): LAS rescoring of the n-best, LAS beam search, or none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sonus.asr.decoding.beam import BeamSearch, BeamState, ModifiedBeamSearch
from sonus.asr.decoding.greedy import GreedySearch, GreedyState
from sonus.asr.decoding.las import LASBeamSearch, combine, las_score_nbest
from sonus.asr.decoding.search import TransducerSearch
from sonus.asr.decoding.types import DecodeResult, DecodingOptions, Hypothesis
from sonus.asr.model import EncoderOutput, TwoPassASR
from sonus.text.tokenizer import Tokenizer

__all__ = [
    "BeamSearch", "BeamState", "DecodeResult", "Decoder", "DecodingOptions", "GreedySearch", "GreedyState", "Hypothesis",
    "ModifiedBeamSearch", "TransducerSearch", "combine", "make_search",
]  # fmt: skip


def make_search(options: DecodingOptions) -> TransducerSearch:
    """The first-pass search object ``options.strategy`` names."""
    strategies: dict[str, Callable[[], TransducerSearch]] = {
        "greedy": lambda: GreedySearch(options.max_symbols_per_frame),
        "modified_beam": lambda: ModifiedBeamSearch(options.beam_size),
        "beam": lambda: BeamSearch(options.beam_size, options.max_symbols_per_frame),
    }
    return strategies[options.strategy]()


class Decoder:
    """Runs the first pass, then the second pass chosen by the options.

    ``decode`` returns first-pass and final results, so both can be scored from one run.
    The streaming decoder (:mod:`sonus.asr.streaming`) uses the same two passes.
    """

    def __init__(self, model: TwoPassASR, tokenizer: Tokenizer, options: DecodingOptions) -> None:
        self.model, self.tokenizer, self.opts = model, tokenizer, options
        self.search = make_search(options)
        if options.second_pass != "none" and model.las is None:
            raise ValueError("decoding.second_pass needs a model with LAS (model.las.enabled=true)")

    def texts(self, results: list[DecodeResult]) -> list[DecodeResult]:
        """Fill every hypothesis' ``text`` from its tokens; returns ``results``."""
        for r in results:
            for h in r.nbest:
                h.text = self.tokenizer.decode(h.tokens)
        return results

    @torch.no_grad()
    def first_pass(self, enc: EncoderOutput) -> list[DecodeResult]:
        return self.texts(self.search(self.model.predictor, self.model.joiner, enc.enc, enc.lengths))

    @torch.no_grad()
    def second_pass(self, enc: EncoderOutput, first: list[DecodeResult]) -> list[DecodeResult]:
        """Final results from the first pass' n-best (``first`` itself when second_pass is 'none')."""
        las, o = self.model.las, self.opts
        if o.second_pass == "none":
            return first
        assert las is not None, "checked in __init__"
        if o.second_pass == "las_beam":
            return self.texts(LASBeamSearch(o.las_beam_size, o.las_max_len_ratio)(las, enc.enc, enc.lengths))
        las_score_nbest(las, enc.enc, enc.lengths, first)
        return self.texts(combine(first, o.las_weight, o.length_bonus))

    @torch.no_grad()
    def decode_encoded(self, enc: EncoderOutput) -> tuple[list[DecodeResult], list[DecodeResult]]:
        """-> (first-pass results, final results); identical when second_pass is 'none'."""
        first = self.first_pass(enc)
        return first, self.second_pass(enc, first)

    @torch.no_grad()
    def decode(self, wave: torch.Tensor, wave_lengths: torch.Tensor) -> tuple[list[DecodeResult], list[DecodeResult]]:
        return self.decode_encoded(self.model.encode(wave, wave_lengths))
