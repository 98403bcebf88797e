"""Decoding options and results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

Strategy = Literal["greedy", "modified_beam", "beam", "ctc_greedy", "ctc_prefix_beam"]
CTC_STRATEGIES = ("ctc_greedy", "ctc_prefix_beam")  # first pass on the CTC head, not the transducer
SecondPass = Literal["none", "rescore", "las_beam", "union"]


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode. ``las_weight`` is w in score = (1 - w) * first pass + w * las, the first
    pass being RNN-T (``strategy`` greedy, modified_beam, beam) or CTC (ctc_greedy, ctc_prefix_beam;
    with rescoring, WeNet's attention rescoring)."""

    strategy: Strategy = "beam"
    beam_size: int = 4  # RNN-T beam, or CTC prefix beam (which also keeps this many tokens a frame)
    max_symbols_per_frame: int = 10  # greedy and beam; modified_beam emits at most one
    second_pass: SecondPass = "rescore"
    las_weight: float = 0.5
    las_beam_size: int = 4
    las_max_len_ratio: float = 3.0  # LAS beam: max tokens per encoder frame (characters at 80 ms frames: about 1.3)
    length_bonus: float = 0.0  # added per token to the rescored score
    lm_weight: float = 0.0  # shallow fusion of a lexicon LM in the beam searches (0: none; the Decoder's ``lm``)

    def __post_init__(self) -> None:
        if self.strategy not in get_args(Strategy):
            raise ValueError(f"decoding.strategy must be one of {get_args(Strategy)}, got {self.strategy!r}")
        if self.second_pass not in get_args(SecondPass):
            raise ValueError(f"decoding.second_pass must be one of {get_args(SecondPass)}, got {self.second_pass!r}")
        if not 0.0 <= self.las_weight <= 1.0:
            raise ValueError(f"decoding.las_weight must be in [0, 1], got {self.las_weight}")
        if self.beam_size < 1 or self.las_beam_size < 1:
            raise ValueError(f"beam sizes must be >= 1: {self.beam_size}, {self.las_beam_size}")

    @property
    def first_pass_kind(self) -> Literal["rnnt", "ctc"]:
        """Which head the first pass decodes with."""
        return "ctc" if self.strategy in CTC_STRATEGIES else "rnnt"


@dataclass
class Hypothesis:
    """One decoding result. ``score`` is the ranking score; the parts are kept for tuning."""

    tokens: list[int]
    score: float
    rnnt_score: float  # the first pass' log-probability: RNN-T's, or CTC's with a CTC first pass
    las_score: float | None = None
    text: str = ""
    frames: list[int] | None = None  # transducer searches: the encoder frame at which each token was emitted
    lm_score: float | None = None  # the weighted lexicon LM score in ``score`` (shallow fusion), None without one


@dataclass
class DecodeResult:
    """N-best list of one utterance, best first."""

    nbest: list[Hypothesis] = field(default_factory=list)

    @property
    def best(self) -> Hypothesis:
        return self.nbest[0]
