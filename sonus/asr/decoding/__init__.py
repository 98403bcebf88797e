"""Decoding: an options dataclass and small strategy objects (greedy, beam, rescoring).

First pass (``DecodingOptions.strategy``), each batched over utterances: a :class:`TransducerSearch`
on the predictor and joiner, or a :class:`CTCSearch` on the CTC head (``model.ctc``)::

    greedy           GreedySearch: label-looping, up to ``max_symbols_per_frame`` labels a frame
    modified_beam    ModifiedBeamSearch: beam ``beam_size``, at most one label a frame
    beam             BeamSearch: time-synchronous beam, up to ``max_symbols_per_frame`` labels a frame
    ctc_greedy       CTCGreedySearch: best path, repeats collapsed, blanks dropped
    ctc_prefix_beam  CTCPrefixBeamSearch: prefix beam ``beam_size``, ``beam_size`` tokens tried a frame

With a :class:`Lexicon` (word unigram LM over a lexicon, ``lexicon.py``) and ``lm_weight`` > 0, the
beam searches (RNN-T, CTC prefix and LAS) add the LM's weighted score to every label (shallow fusion).

The decoder binds the search to the model parts it needs (:class:`FirstPass`), so it and the
streaming decoder drive every strategy alike. Second pass (``second_pass``): LAS rescoring of
the n-best (after a CTC first pass: WeNet's attention rescoring), LAS beam search, the union of
both n-best lists rescored by both models (and the lexicon LM, if any), or none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sonus.asr.decoding.beam import BeamSearch, BeamState, ModifiedBeamSearch
from sonus.asr.decoding.ctc import (
    CTCGreedySearch,
    CTCGreedyState,
    CTCPrefixBeamSearch,
    CTCSearch,
    PrefixBeamState,
)
from sonus.asr.decoding.first_pass import (
    CTCFirstPass,
    FirstPass,
    TransducerFirstPass,
    bind,
)
from sonus.asr.decoding.greedy import GreedySearch, GreedyState
from sonus.asr.decoding.las import (
    LASBeamSearch,
    combine,
    first_pass_score_nbest,
    las_score_nbest,
    union_nbest,
)
from sonus.asr.decoding.lexicon import Lexicon, count_words, fused
from sonus.asr.decoding.search import TransducerSearch
from sonus.asr.decoding.types import (
    CTC_STRATEGIES,
    DecodeResult,
    DecodingOptions,
    Hypothesis,
)
from sonus.asr.model import EncoderOutput, TwoPassASR
from sonus.text.tokenizer import Tokenizer

__all__ = [
    "CTC_STRATEGIES", "BeamSearch", "BeamState", "CTCFirstPass", "CTCGreedySearch", "CTCGreedyState",
    "CTCPrefixBeamSearch", "CTCSearch", "DecodeResult", "Decoder", "DecodingOptions", "FirstPass", "GreedySearch",
    "GreedyState", "Hypothesis", "Lexicon", "ModifiedBeamSearch", "PrefixBeamState", "TransducerFirstPass", "TransducerSearch",
    "bind", "combine", "count_words", "make_search",
]  # fmt: skip


def make_search(options: DecodingOptions, lm: Lexicon | None = None) -> TransducerSearch | CTCSearch:
    """The first-pass search object ``options.strategy`` names (not yet bound to a model: see :func:`bind`).
    ``lm`` is fused into the beam searches with ``options.lm_weight``."""
    if lm is not None and options.lm_weight and options.strategy not in ("modified_beam", "beam", "ctc_prefix_beam"):
        raise ValueError(f"decoding.lm_weight > 0 needs decoding.strategy=beam, modified_beam or ctc_prefix_beam, got {options.strategy}")
    strategies: dict[str, Callable[[], TransducerSearch | CTCSearch]] = {
        "greedy": lambda: GreedySearch(options.max_symbols_per_frame),
        "modified_beam": lambda: ModifiedBeamSearch(options.beam_size, lm, options.lm_weight),
        "beam": lambda: BeamSearch(options.beam_size, options.max_symbols_per_frame, lm, options.lm_weight),
        "ctc_greedy": lambda: CTCGreedySearch(),
        "ctc_prefix_beam": lambda: CTCPrefixBeamSearch(options.beam_size, lm=lm, lm_weight=options.lm_weight),
    }
    return strategies[options.strategy]()


class Decoder:
    """Runs the first pass, then the second pass chosen by the options.

    ``decode`` returns first-pass and final results, so both can be scored from one run.
    The streaming decoder (:mod:`sonus.asr.streaming`) uses the same two passes.
    """

    def __init__(self, model: TwoPassASR, tokenizer: Tokenizer, options: DecodingOptions, lm: Lexicon | None = None) -> None:
        self.model, self.tokenizer, self.opts = model, tokenizer, options
        self.lm, self.lm_weight = fused(lm, options.lm_weight)
        self.first_search = bind(make_search(options, lm), model, options.strategy)  # start(B, device), run(enc, lengths, state), results
        self.las_beam = LASBeamSearch(options.las_beam_size, options.las_max_len_ratio, self.lm, self.lm_weight)  # las_beam, union
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
        return self.texts(self.first_search(enc.enc, enc.lengths))

    @torch.no_grad()
    def second_pass(self, enc: EncoderOutput, first: list[DecodeResult]) -> list[DecodeResult]:
        """Final results from the first pass' n-best (``first`` itself when second_pass is 'none')."""
        las, o = self.model.las, self.opts
        if o.second_pass == "none":
            return first
        assert las is not None, "checked in __init__"
        if o.second_pass == "las_beam":
            return self.texts(self.las_beam(las, enc.enc, enc.lengths))
        if o.second_pass == "union":
            # the LAS beam's hypotheses have no first-pass score, and the search's are partial
            # sums: score all of them exactly, and with the LM, so that they compare fairly
            las_nbest = self.texts(self.las_beam(las, enc.enc, enc.lengths))
            first = union_nbest(first, las_nbest)
            first_pass_score_nbest(self.first_search, enc.enc, enc.lengths, first)
            if self.lm is not None:
                for h in (h for r in first for h in r.nbest):
                    h.lm_score = self.lm_weight * self.lm.score_text(h.text)
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
