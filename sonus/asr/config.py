"""Model dimensions of the two-pass recognizer, stored in every checkpoint.

Loading rebuilds the model from this config (whisper's ModelDimensions), so a
checkpoint is self-describing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal, get_type_hints

from sonus.nn.conformer import ConformerConfig


@dataclass(frozen=True)
class EncoderConfig:
    """``kind="lstm"``: time reduction then unidirectional LSTMs (the fields below);
    ``kind="conformer"``: the chunk-wise streaming Conformer of ``conformer``."""

    hidden: int = 512
    layers: int = 3
    reduction: int = 4  # time reduction factor
    reduction_type: Literal["stack", "pool"] = "stack"
    dropout: float = 0.1
    kind: Literal["lstm", "conformer"] = "lstm"
    conformer: ConformerConfig = field(default_factory=ConformerConfig)


@dataclass(frozen=True)
class PredictorConfig:
    kind: Literal["lstm", "gru"] = "lstm"
    hidden: int = 512
    layers: int = 1
    embed: int = 256
    dropout: float = 0.1


@dataclass(frozen=True)
class JoinerConfig:
    hidden: int = 512


@dataclass(frozen=True)
class LASConfig:
    enabled: bool = True
    enc2_hidden: int = 512  # per direction of the BiLSTM
    dec_hidden: int = 512
    embedding_dim: int = 256
    attention: Literal["location", "dot"] = "location"
    input_feeding: bool = True  # the decoder LSTM reads the last context; False: tokens only (parallel training)
    attention_dim: int = 256
    location_channels: int = 10
    location_kernel: int = 31
    dropout: float = 0.1
    train_fraction: float = 1.0  # share of each training batch the LAS loss sees (its decoder loop is costly)


@dataclass(frozen=True)
class TransducerLossConfig:
    """``kind="pruned"``: Kuang et al. 2022 (k2/icefall). The model gains two small
    projections for the simple loss; the objective is ``simple_scale * simple + pruned``
    once warmed up (icefall's schedule: simple 1.0 -> simple_scale and pruned 0.1 -> 1.0
    over ``warmup_steps``, since the first ranges come from an untrained simple joiner)."""

    kind: Literal["full", "pruned"] = "full"
    prune_range: int = 5  # S: label positions kept per frame
    simple_scale: float = 0.5
    warmup_steps: int = 1000
    fastemit_lambda: float = 0.0  # FastEmit (Yu et al. 2021): lower streaming emission delay

    def __post_init__(self) -> None:
        if self.kind not in ("full", "pruned"):
            raise ValueError(f"model.loss must be 'full' or 'pruned', got {self.kind!r}")


@dataclass(frozen=True)
class ASRModelConfig:
    vocab_size: int  # includes blank, unk and eos
    n_mels: int = 80
    feat_in: int | None = None  # D: inputs are (T, D) feature sequences, no audio front end; None: audio
    sample_rate: int = 16000
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    joiner: JoinerConfig = field(default_factory=JoinerConfig)
    las: LASConfig = field(default_factory=LASConfig)
    ctc_head: bool = False  # a CTC projection on the shared encoder (auxiliary loss, or the first pass)
    transducer: bool = True  # the RNN-T predictor and joiner; False: a CTC model (needs ctc_head)
    rnnt_loss: TransducerLossConfig = field(default_factory=TransducerLossConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ASRModelConfig:
        return _from_dict(cls, d, "model")


def _from_dict(cls: type, d: dict[str, Any], where: str) -> Any:
    """Rebuild dataclass ``cls`` from nested dicts; an unknown key is an error naming its path.
    Keys a dict leaves out take their defaults, so older checkpoints load."""
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown keys in {where}: {sorted(unknown)}; known: {sorted(known)}")
    types = get_type_hints(cls)
    kw = {}
    for k, v in d.items():
        kw[k] = _from_dict(types[k], v, f"{where}.{k}") if is_dataclass(types[k]) and isinstance(v, dict) else v
    return cls(**kw)
