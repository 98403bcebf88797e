"""A word lexicon with unigram probabilities, scored token by token for shallow fusion.

The words (counted in training transcripts) form a character trie. A hypothesis' LM state is
a trie node: its partial word, or ROOT between words, or OOV inside a word the lexicon lacks.
Every node n carries la[n] = log of the total probability of the words under it (look-ahead,
as in lexical-tree decoders), so a label that spells on from node n to node m scores
la[m] - la[n], a word boundary after a complete word w scores log P(w) - la[n], and in all a
known word scores log P(w) and an unknown one ``oov_logprob``, whichever tokens spell them.
Subword labels walk several characters (SentencePiece's leading "\u2581" is a word boundary).

For the beam searches the walks are tabulated once, per (node, label): the label's score and
the node it leads to (:meth:`Lexicon.step`). Most pairs take a default (spelling off the trie
leads to OOV; a word-initial label closes the word and walks from ROOT); the rest are kept
sparse, grouped by node (CSR), so the tables stay small at any vocabulary size.

Shapes: N hypotheses, V labels, M trie nodes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from sonus.text.tokenizer import BLANK, CharTokenizer, Tokenizer

ROOT, OOV = 0, 1
# the tensors :meth:`Lexicon.step` and :attr:`Lexicon.final` read
TABLES = ("final", "start_node", "start_score", "starts", "la", "ptr", "cols", "nodes", "scores")


def label_strings(tok: Tokenizer) -> list[str | None]:
    """Surface text of every label id, a word boundary as " "; None for blank, <unk>, <eos>."""
    out: list[str | None] = [None] * tok.vocab_size
    if isinstance(tok, CharTokenizer):
        for i, c in enumerate(tok.chars):
            out[i + 3] = c
        return out
    sp = getattr(tok, "sp", None)
    if sp is None:
        raise TypeError(f"no label strings for a {type(tok).__name__}")
    for i in range(sp.get_piece_size()):
        if not (sp.is_unknown(i) or sp.is_control(i)) and i + 1 >= 3:
            out[i + 1] = sp.id_to_piece(i).replace("\u2581", " ")
    return out


class Lexicon:
    """Word unigram LM over ``counts``, stepped per label of ``tok`` (see the module docstring).

    ``oov_logprob``: the log-probability of any word not in the lexicon (per word, whatever its
    length). ``word_bonus`` is added for every word, known or not, to balance the per-word cost."""

    def __init__(self, counts: dict[str, int], tok: Tokenizer, oov_logprob: float = -20.0, word_bonus: float = 0.0) -> None:
        counts = {w: c for w, c in counts.items() if w and c > 0 and " " not in w}
        if not counts:
            raise ValueError("the lexicon has no words")
        total = sum(counts.values())
        self.oov_logprob, self.word_bonus = oov_logprob, word_bonus
        children: list[dict[str, int]] = [{}, {}]  # ROOT, OOV
        word_lp: list[float | None] = [None, None]
        for w, c in counts.items():
            n = ROOT
            for ch in w:
                if ch not in children[n]:
                    children[n][ch] = len(children)
                    children.append({})
                    word_lp.append(None)
                n = children[n][ch]
            word_lp[n] = math.log(c / total)
        self.num_nodes = M = len(children)
        la = [float("-inf")] * M  # log-sum-exp of the word probabilities under each node, children after parents
        for n in range(M - 1, 1, -1):
            terms = [la[m] for m in children[n].values()] + ([word_lp[n]] if word_lp[n] is not None else [])
            la[n] = _logsumexp(terms)
        la[ROOT], la[OOV] = 0.0, 0.0
        # closing the current word at a boundary (or at the end): ROOT nothing, OOV the bonus
        # (its cost was paid on entering), a trie node its word, or an unknown word if it is none
        close = [0.0, word_bonus] + [
            (word_lp[n] if word_lp[n] is not None else oov_logprob) - la[n] + word_bonus for n in range(2, M)
        ]
        self._children, self._la = children, la
        # (M,) closing the word at a node: the score of a boundary there, and of ending the utterance there
        self.final = torch.tensor(close, dtype=torch.float32)
        self._build_tables(label_strings(tok), close)

    def _walk(self, n: int, text: str, close: list[float]) -> tuple[int, float]:
        """Node and score after spelling ``text`` from node n."""
        score = 0.0
        for ch in text:
            if ch == " ":
                score += close[n]
                n = ROOT
            elif n == OOV:
                continue
            elif ch in self._children[n]:
                m = self._children[n][ch]
                score += self._la[m] - self._la[n]
                n = m
            else:
                score += self.oov_logprob - self._la[n]
                n = OOV
        return n, score

    def _build_tables(self, labels: list[str | None], close: list[float]) -> None:
        V, M = len(labels), self.num_nodes
        valid = [i for i, s in enumerate(labels) if s]
        self.vocab_size = V
        # labels that start a word: close the current one, then walk from ROOT
        starts = torch.zeros(V, dtype=torch.bool)
        self.start_node = torch.full((V,), ROOT, dtype=torch.long)
        self.start_score = torch.zeros(V)
        for i in valid:
            if labels[i][0] == " ":
                starts[i] = True
                self.start_node[i], self.start_score[i] = self._walk(ROOT, labels[i], [0.0] * M)
        self.starts = starts
        self.la = torch.tensor(self._la, dtype=torch.float32)
        # labels that continue a word: off the trie -> OOV (the default); on it, kept sparse
        by_first: dict[str, list[int]] = {}
        for i in valid:
            if labels[i][0] != " ":
                by_first.setdefault(labels[i][0], []).append(i)
        ptr, cols, nodes, scores = [0], [], [], []
        for n in range(M):
            if n != OOV:
                for ch in self._children[n]:
                    for i in by_first.get(ch, ()):
                        m, s = self._walk(n, labels[i], close)
                        cols.append(i)
                        nodes.append(m)
                        scores.append(s)
            ptr.append(len(cols))
        self.ptr = torch.tensor(ptr, dtype=torch.long)
        self.cols = torch.tensor(cols, dtype=torch.long)
        self.nodes = torch.tensor(nodes, dtype=torch.long)
        self.scores = torch.tensor(scores, dtype=torch.float32)

    def to(self, device: torch.device) -> Lexicon:
        for k in TABLES:
            setattr(self, k, getattr(self, k).to(device))
        return self

    def tables(self) -> dict[str, np.ndarray]:
        """The step tables as numpy arrays, with ``oov_logprob`` (0-d; the word bonus is inside
        ``final``): what an ONNX export writes (``lexicon.npz``) for
        :class:`sonus.export.ort_lexicon.LexiconTables`."""
        out = {k: getattr(self, k).cpu().numpy() for k in TABLES}
        out["oov_logprob"] = np.array(self.oov_logprob, dtype=np.float32)
        return out

    def save_tables(self, path: str | Path) -> None:
        """:meth:`tables` as an ``.npz`` file (plain arrays: read with ``allow_pickle=False``)."""
        with open(path, "wb") as f:  # np.savez would add .npz to a name without it
            np.savez(f, **self.tables())

    def step(self, node: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """node (N,) -> (score (N, V), next node (N, V)) of every label; blank keeps the node and scores 0."""
        N, V = node.shape[0], self.vocab_size
        on_trie = (node != OOV)[:, None]
        score = torch.where(on_trie, self.oov_logprob - self.la[node][:, None], 0.0).expand(N, V).clone()
        nxt = torch.full((N, V), OOV, dtype=torch.long, device=node.device)
        # word-initial labels
        score = torch.where(self.starts, self.final[node][:, None] + self.start_score, score)
        nxt = torch.where(self.starts, self.start_node.expand(N, V), nxt)
        # labels that stay on the trie: the sparse rows of these nodes
        lo, hi = self.ptr[node], self.ptr[node + 1]
        counts = hi - lo
        if int(counts.sum()):
            row = torch.repeat_interleave(torch.arange(N, device=node.device), counts)
            first = torch.repeat_interleave(lo - torch.cumsum(counts, 0) + counts, counts)
            k = first + torch.arange(row.shape[0], device=node.device)
            score[row, self.cols[k]] = self.scores[k]
            nxt[row, self.cols[k]] = self.nodes[k]
        score[:, BLANK] = 0.0
        nxt[:, BLANK] = node
        return score, nxt

    def score_text(self, text: str) -> float:
        """Log-probability of a whole text (with word bonuses): the sum of what ``step`` and ``final`` give."""
        n, s = self._walk(ROOT, text, self.final.tolist())
        return s + float(self.final[n])


def fused(lm: Lexicon | None, weight: float) -> tuple[Lexicon | None, float]:
    """The LM a search fuses, and its weight: ``(None, 0.0)`` without one or at weight 0."""
    return (lm, weight) if lm is not None and weight != 0.0 else (None, 0.0)


def count_words(texts: Iterable[str]) -> dict[str, int]:
    """Word counts of whitespace-split texts."""
    c: Counter[str] = Counter()
    for t in texts:
        c.update(t.split())
    return dict(c)


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    if m == float("-inf"):
        return m
    return m + math.log(sum(math.exp(x - m) for x in xs))
