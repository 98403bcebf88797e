"""Text normalisation applied to transcripts before tokenising and scoring."""

from __future__ import annotations

import re
import unicodedata

_PUNCT = re.compile(r"[^\w\s']", flags=re.UNICODE)
_SPACES = re.compile(r"\s+")


def normalize_text(text: str, lowercase: bool = True, remove_punctuation: bool = True) -> str:
    """NFKC, optional lowercasing and punctuation removal (apostrophes kept), single spaces."""
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    if remove_punctuation:
        text = _PUNCT.sub(" ", text).replace("_", " ")
    return _SPACES.sub(" ", text).strip()
