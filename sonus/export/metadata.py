"""What ``metadata.json`` records besides the graphs: versions, the encoder's streaming unit,
the decoding defaults, the tokenizer, and the optional lexicon LM (written beside it).

:func:`sonus.export.onnx.export_model` assembles the file from these; the reader,
:func:`sonus.export.ort_decoder.read_metadata`, needs no torch and so does not import this module.
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sonus.asr.decoding import DecodingOptions
from sonus.asr.encoder import LSTMEncoder
from sonus.asr.model import TwoPassASR
from sonus.text.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer

if TYPE_CHECKING:
    from sonus.export.onnx import ExportOptions

FORMAT_VERSION = 1
LEXICON_FILE = "lexicon.npz"


def sonus_version() -> str:
    try:
        return version("sonus")
    except PackageNotFoundError:
        return "unknown"


def encoder_entry(model: TwoPassASR) -> dict[str, Any]:
    """``metadata.json``'s ``encoder``: what the recognizer needs to feed the encoder graph."""
    enc, cfg = model.encoder, model.cfg.encoder
    if isinstance(enc, LSTMEncoder):
        return {
            "kind": "lstm",
            "reduction": cfg.reduction,
            "layers": cfg.layers,
            "out_dim": enc.out_dim,
        }
    c = enc.cfg
    return {
        "kind": "conformer", "out_dim": enc.out_dim, "layers": c.layers, "heads": c.heads, "conv_kernel": c.conv_kernel,
        "subsampling": c.subsampling, "reduction": enc.reduction,  # feature frames per encoder frame
        "chunk_size": c.chunk_size,  # encoder frames a chunk
        "chunk_frames": enc.reduction * c.chunk_size,  # feature frames a chunk: the unit the graph takes
        "left_chunks": c.left_chunks, "cache": "fixed" if c.left_chunks >= 0 else "growing",
    }  # fmt: skip


def decoding_defaults(options: ExportOptions, checkpoint: str | Path = "") -> dict[str, Any]:
    """``metadata.json``'s ``decoding``: w and the length bonus of LAS rescoring, each from
    ``options`` when given, else from the training run's config (``decoding`` of the
    ``config.yaml`` that training writes beside its checkpoints), else
    :class:`~sonus.asr.decoding.DecodingOptions`' defaults; ``from`` says which file, if any."""
    found: dict[str, Any] = {}
    cfg_path = Path(checkpoint).parent / "config.yaml" if checkpoint else None
    if cfg_path is not None and cfg_path.is_file():
        import yaml  # type: ignore[import-untyped]  # the config is saved resolved: plain YAML

        try:
            cfg = yaml.safe_load(cfg_path.read_text())
        except (OSError, yaml.YAMLError) as e:  # a damaged run folder must not block the export
            warnings.warn(f"{cfg_path}: cannot read it ({e}); using the default decoding options", stacklevel=2)
            cfg = None
        dec = cfg.get("decoding") if isinstance(cfg, dict) else None
        found = dict(dec) if isinstance(dec, dict) else {}
    d = DecodingOptions()

    def pick(given: float | None, key: str, default: float) -> float:
        return float(given if given is not None else found[key] if found.get(key) is not None else default)

    return {
        "las_weight": pick(options.las_weight, "las_weight", d.las_weight),
        "length_bonus": pick(options.length_bonus, "length_bonus", d.length_bonus),
        "from": str(cfg_path) if found else None,
    }


def tokenizer_entry(tok: Tokenizer) -> tuple[dict[str, Any], str, list[str]]:
    """-> metadata entry, file name, vocabulary (id -> piece, blank/unk/eos included)."""
    if isinstance(tok, CharTokenizer):
        return (
            {"kind": "char", "file": "tokenizer.chars", "id_shift": 3},
            "tokenizer.chars",
            ["<blank>", "<unk>", "<eos>", *tok.chars],
        )
    if isinstance(tok, SentencePieceTokenizer):
        pieces = [tok.sp.id_to_piece(i) for i in range(tok.sp.get_piece_size())]
        return (
            {"kind": "sentencepiece", "file": "tokenizer.model", "id_shift": 1},
            "tokenizer.model",
            ["<blank>", *pieces],
        )
    raise ValueError(f"cannot export tokenizer of type {type(tok).__name__}")


def write_lexicon(options: ExportOptions, tokenizer: Tokenizer, normalize: dict, out: Path) -> dict[str, Any] | None:
    """With ``options.lm_text``: the lexicon LM of its words, its step tables written to
    ``out / LEXICON_FILE`` -> ``metadata.json``'s ``lexicon``; None without one."""
    if not options.lm_text:
        return None
    from sonus.asr.infer import load_lexicon

    lex = load_lexicon(options.lm_text, tokenizer, normalize, options.lm_oov_logprob, options.lm_word_bonus)
    lex.save_tables(out / LEXICON_FILE)
    return {"file": LEXICON_FILE, "text": str(options.lm_text), "trie_nodes": lex.num_nodes,
            "oov_logprob": options.lm_oov_logprob, "word_bonus": options.lm_word_bonus}  # fmt: skip
