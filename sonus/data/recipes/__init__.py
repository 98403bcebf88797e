"""Corpus recipes: ``prepare_<corpus>(...)`` library functions that write manifests."""

from sonus.data.recipes._split import CorpusError

__all__ = ["CorpusError"]
