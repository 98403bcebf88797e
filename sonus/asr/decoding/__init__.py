"""Decoding: an options dataclass and small strategy objects (greedy, beam, rescoring)."""

from __future__ import annotations

import torch

from sonus.asr.decoding.las import LASBeamSearch, combine, las_score_nbest
from sonus.asr.decoding.rnnt import BeamSearch, GreedySearch, ModifiedBeamSearch
from sonus.asr.decoding.types import DecodeResult, DecodingOptions, Hypothesis
from sonus.asr.model import EncoderOutput, TwoPassASR
from sonus.text.tokenizer import Tokenizer

__all__ = ["DecodeResult", "DecodingOptions", "Hypothesis", "Decoder", "combine"]


class Decoder:
    """Runs the first pass, then the second pass chosen by the options.

    ``decode`` returns first-pass and final results, so both can be scored from one run.
    """

    def __init__(self, model: TwoPassASR, tokenizer: Tokenizer, options: DecodingOptions) -> None:
        self.model, self.tokenizer, self.opts = model, tokenizer, options
        strategies = {
            "greedy": lambda: GreedySearch(options.max_symbols_per_frame),
            "modified_beam": lambda: ModifiedBeamSearch(options.beam_size),
            "beam": lambda: BeamSearch(options.beam_size, options.max_symbols_per_frame),
        }
        self.first = strategies[options.strategy]()
        if options.second_pass != "none" and model.las is None:
            raise ValueError("decoding.second_pass needs a model with LAS (model.las.enabled=true)")

    def _texts(self, results: list[DecodeResult]) -> list[DecodeResult]:
        for r in results:
            for h in r.nbest:
                h.text = self.tokenizer.decode(h.tokens)
        return results

    @torch.no_grad()
    def decode_encoded(self, enc: EncoderOutput) -> tuple[list[DecodeResult], list[DecodeResult]]:
        """-> (first-pass results, final results); identical when second_pass is 'none'."""
        m = self.model
        first = self._texts(self.first(m.predictor, m.joiner, enc.enc, enc.lengths))
        if self.opts.second_pass == "none":
            return first, first
        if self.opts.second_pass == "las_beam":
            final = LASBeamSearch(self.opts.las_beam_size, self.opts.las_max_len_ratio)(m.las, enc.enc, enc.lengths)
            return first, self._texts(final)
        las_score_nbest(m.las, enc.enc, enc.lengths, first)
        return first, self._texts(combine(first, self.opts.las_weight, self.opts.length_bonus))

    @torch.no_grad()
    def decode(self, wave: torch.Tensor, wave_lengths: torch.Tensor) -> tuple[list[DecodeResult], list[DecodeResult]]:
        return self.decode_encoded(self.model.encode(wave, wave_lengths))
