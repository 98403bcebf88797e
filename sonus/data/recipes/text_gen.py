"""Sentence generator for the synthetic corpus (:mod:`sonus.data.recipes.synth`).

The vocabulary is the most frequent English words of ``wordfreq`` (its data ships with
the package, so this works offline), filtered to what a text-to-speech engine reads
unambiguously: lowercase letters with at most one inner apostrophe ("don't"), no
abbreviations that eSpeak would spell out letter by letter ("bbc", "tv"), no single
letters other than "a" and "i", and no offensive words.

Sentences are bags of words, not grammar: each word is drawn independently with a mild
Zipf weight ``(rank + 10) ** -0.5``, so the commonest word is about eight times as
frequent as the rarest of 4,000 and every word recurs in a corpus of ~50k tokens. A
language model learns unigram frequencies from this corpus and nothing more; what an
ASR model has to learn is acoustic.
"""

from __future__ import annotations

import re

import numpy as np

WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")
"""A vocabulary word: lowercase letters, at most one apostrophe between letters."""

TEXT_RE = re.compile(r"[a-z']+(?: [a-z']+)*")
"""A generated sentence: words of ``[a-z']`` separated by single spaces."""

# Two-letter tokens in wordfreq are mostly abbreviations (dr, tv, uk, ...); keep only words.
_TWO_LETTER_WORDS = frozenset(
    "am an as at be by do go he hi if in is it me my no of oh on or so to up us we ah ha ox".split()
)

# Abbreviations and fragments among the top ~6,500 entries that eSpeak spells out or that
# are not words on their own (contractions without their apostrophe, units, months).
_NOT_WORDS = frozenset(
    """
    etc usa inc iii bbc nfl dna ltd ceo fbi tho vol nba feb nov oct aug gen del dec cnn con
    las los san pre non lol mrs dvd abc gop wtf cia tbh hiv idk mps aka ios rev sri est phd
    btw lbs des der von les com bio mar jan apr jun jul sep sept tues thu thurs fri hmm nyc
    http https www html lmao omg dont cant thats didnt doesnt isnt wasnt youre theyre whats
    ive im id hes shes wont couldnt wouldnt shouldnt arent theres heres
    """.split()
)

# Words that should not appear in a demo corpus.
_BLOCKLIST = frozenset(
    """
    fuck fucking fuckin fucked fucker fucks motherfucker shit shitty bullshit bitch bitches
    dick dicks cock cunt pussy asshole ass arse damn goddamn crap piss pissed porn porno rape
    raped rapist sex sexy slut whore nigga nigger niggas fag faggot retard retarded nazi nazis
    isis dildo penis vagina boobs tits horny cum wank bastard hoe hoes twat jizz
    """.split()
)

ZIPF_EXPONENT = 0.5
ZIPF_OFFSET = 10.0


def is_vocabulary_word(word: str) -> bool:
    """Whether ``word`` passes the filters described in the module docstring."""
    if not WORD_RE.fullmatch(word) or word in _BLOCKLIST or word in _NOT_WORDS:
        return False
    letters = word.replace("'", "")
    if len(letters) == 1:
        return word in ("a", "i")
    if len(letters) == 2 and "'" not in word:
        return word in _TWO_LETTER_WORDS
    return bool(re.search(r"[aeiouy]", letters))  # "mrs", "st": no vowel, spelled out


def build_vocabulary(size: int = 4000) -> list[str]:
    """The ``size`` most frequent English words that pass :func:`is_vocabulary_word`.

    Returns:
        Distinct words in descending frequency order.

    Raises:
        ValueError: ``size`` < 1, or wordfreq has fewer usable words than ``size``.
    """
    if size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {size}")
    from wordfreq import top_n_list  # imported here: loading its data takes a moment

    candidates = top_n_list("en", max(4 * size, 1000))
    words = [w for w in candidates if is_vocabulary_word(w)]
    if len(words) < size:
        raise ValueError(f"vocab_size={size}: wordfreq yields only {len(words)} usable English words")
    return words[:size]


class SentenceGenerator:
    """Draws short sentences from a ranked vocabulary with a mild Zipf weighting.

    Args:
        vocabulary: distinct words, most frequent first (as :func:`build_vocabulary`).
        min_words, max_words: inclusive range of the number of words per sentence,
            drawn uniformly.
    """

    def __init__(self, vocabulary: list[str], min_words: int = 2, max_words: int = 6) -> None:
        if not 1 <= min_words <= max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}")
        if len(set(vocabulary)) != len(vocabulary) or not vocabulary:
            raise ValueError(f"vocabulary must be non-empty and distinct ({len(vocabulary)} words given)")
        bad = [w for w in vocabulary if not WORD_RE.fullmatch(w)]
        if bad:
            raise ValueError(f"vocabulary words must match {WORD_RE.pattern}: {bad[:5]}")
        self.vocabulary = list(vocabulary)
        self.min_words = min_words
        self.max_words = max_words
        weights = (np.arange(len(vocabulary)) + ZIPF_OFFSET) ** -ZIPF_EXPONENT  # (V,)
        self.probs = weights / weights.sum()

    def sample(self, rng: np.random.Generator) -> str:
        """One sentence: lowercase words separated by single spaces."""
        n = int(rng.integers(self.min_words, self.max_words + 1))
        idx = rng.choice(len(self.vocabulary), size=n, p=self.probs)
        return " ".join(self.vocabulary[i] for i in idx)

    def sample_unique(self, n: int, rng: np.random.Generator, exclude: set[str] | None = None) -> list[str]:
        """``n`` distinct sentences, none of them in ``exclude`` (which is updated in place).

        Raises:
            RuntimeError: the vocabulary and length range cannot yield ``n`` new sentences
                (too many consecutive duplicates).
        """
        seen = exclude if exclude is not None else set()
        out: list[str] = []
        misses = 0
        while len(out) < n:
            s = self.sample(rng)
            if s in seen:
                misses += 1
                if misses > 1000 + 10 * n:
                    raise RuntimeError(
                        f"could only draw {len(out)} of {n} distinct sentences from {len(self.vocabulary)} words "
                        f"with {self.min_words}..{self.max_words} words each; raise vocab_size or max_words"
                    )
                continue
            seen.add(s)
            out.append(s)
        return out
