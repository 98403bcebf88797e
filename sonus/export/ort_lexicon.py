"""The lexicon LM of :mod:`sonus.asr.decoding.lexicon` for the numpy searches of
:mod:`sonus.export.ort_search`: its step tables as an export writes them (``lexicon.npz``,
:meth:`~sonus.asr.decoding.lexicon.Lexicon.tables`), stepped without torch.

Shapes: N hypotheses, V labels, M trie nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

ROOT, OOV = 0, 1  # the lexicon's states between words and inside an unknown word (as sonus.asr.decoding.lexicon's)


class LexiconTables:
    """:class:`sonus.asr.decoding.lexicon.Lexicon` for the numpy searches: its step tables, as
    :meth:`~sonus.asr.decoding.lexicon.Lexicon.tables` gives them (an export's ``lexicon.npz``)."""

    FIELDS = ("final", "start_node", "start_score", "starts", "la", "ptr", "cols", "nodes", "scores", "oov_logprob")

    def __init__(self, tables: Mapping[str, np.ndarray], source: str = "lexicon tables") -> None:
        missing = [k for k in self.FIELDS if k not in tables]
        if missing:
            raise ValueError(f"{source}: not a sonus lexicon, missing {missing}")
        t = {k: np.asarray(tables[k]) for k in self.FIELDS}
        self.final, self.start_score, self.la, self.scores = (t[k].astype(np.float32) for k in ("final", "start_score", "la", "scores"))
        self.start_node, self.ptr, self.cols, self.nodes = (t[k].astype(np.int64) for k in ("start_node", "ptr", "cols", "nodes"))
        self.starts = t["starts"].astype(bool)
        self.oov_logprob = np.float32(t["oov_logprob"])
        self.vocab_size, self.num_nodes = self.starts.shape[0], self.final.shape[0]
        if self.ptr.shape[0] != self.num_nodes + 1 or self.start_node.shape[0] != self.vocab_size:
            raise ValueError(f"{source}: inconsistent tables ({self.num_nodes} nodes, ptr {self.ptr.shape[0]}, "
                             f"{self.vocab_size} labels, start_node {self.start_node.shape[0]})")  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> LexiconTables:
        with np.load(path, allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files}, str(path))

    def step(self, node: np.ndarray, blank: int) -> tuple[np.ndarray, np.ndarray]:
        """node (N,) -> (score (N, V) fp32, next node (N, V)) of every label; blank keeps the node and scores 0."""
        shape = (node.shape[0], self.vocab_size)
        # a label off the trie enters OOV; a word-initial one closes the word and walks from ROOT
        off = np.where(node != OOV, self.oov_logprob - self.la[node], np.float32(0.0))[:, None]
        score = np.where(self.starts, self.final[node][:, None] + self.start_score, off).astype(np.float32)
        nxt = np.broadcast_to(np.where(self.starts, self.start_node, OOV), shape).copy()
        for n, m in enumerate(node.tolist()):  # labels that stay on the trie: node m's sparse row
            lo, hi = self.ptr[m], self.ptr[m + 1]
            score[n, self.cols[lo:hi]] = self.scores[lo:hi]
            nxt[n, self.cols[lo:hi]] = self.nodes[lo:hi]
        score[:, blank] = 0.0
        nxt[:, blank] = node
        return score, nxt
