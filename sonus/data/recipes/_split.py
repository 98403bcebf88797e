"""Deterministic splitting helpers shared by the corpus recipes.

Every split is decided by ranking keys (utterance or speaker ids) by a hash of
``(seed, key)``. Unlike ``random.shuffle`` over a list, the rank of a key does not
depend on the order files were listed in, on the Python version, or on which other
keys exist: adding a speaker to a corpus does not move the others between splits.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Mapping, Sequence


class CorpusError(ValueError):
    """A corpus folder lacks the expected layout or content; the message names the file."""


def hash_rank(keys: Iterable[str], seed: int) -> list[str]:
    """Return ``keys`` (deduplicated) ordered by SHA-1 of ``f"{seed}:{key}"``.

    The order is a pseudo-random permutation fixed by ``seed``; ties (impossible in
    practice) are broken by the key itself.
    """

    def digest(key: str) -> str:
        return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()

    return sorted(set(keys), key=lambda k: (digest(k), k))


def pick_held_out(keys: Iterable[str], n: int, seed: int, what: str = "speakers") -> set[str]:
    """Choose ``n`` of ``keys`` deterministically (e.g. held-out speakers).

    Raises:
        ValueError: ``n`` is negative or leaves nothing on the other side.
    """
    ranked = hash_rank(keys, seed)
    if n < 0 or n >= len(ranked):
        raise ValueError(f"cannot hold out {n} of {len(ranked)} {what}: need 0 <= n < {len(ranked)}")
    return set(ranked[:n])


def stratified_pick(groups: Mapping[str, Sequence[str]], n: int, seed: int) -> set[str]:
    """Choose ``n`` keys spread over ``groups`` in proportion to their sizes.

    Every group gives ``floor(n * size / total)`` keys, ranked by :func:`hash_rank`;
    the few left over go to the groups with the largest fractional quotas (largest
    remainder method), so the total is exactly ``n`` and e.g. a dev set holds every
    speaker and every word in the same proportion as the whole.
    """
    total = sum(len(keys) for keys in groups.values())
    if not 0 <= n <= total:
        raise ValueError(f"cannot pick {n} of {total} items")
    quotas = {g: n * len(keys) / total for g, keys in groups.items()}
    counts = {g: int(q) for g, q in quotas.items()}
    by_remainder = sorted(hash_rank(groups.keys(), seed), key=lambda g: -(quotas[g] - counts[g]))
    for g in by_remainder[: n - sum(counts.values())]:
        counts[g] += 1
    picked: set[str] = set()
    for g, keys in groups.items():
        picked.update(hash_rank(keys, seed)[: counts[g]])
    return picked


def scaled_sizes(requested: Sequence[int], available: int, names: Sequence[str]) -> list[int]:
    """Split sizes that fit into ``available`` items.

    Returns ``requested`` unchanged when it fits; otherwise every size is scaled by
    ``available / sum(requested)`` (rounded down, the remainder going to the first,
    i.e. training, split) and a warning says so.

    Raises:
        ValueError: a size is negative or every requested size is zero.
    """
    if any(s < 0 for s in requested) or sum(requested) == 0:
        raise ValueError(f"split sizes must be >= 0 and not all zero, got {dict(zip(names, requested))}")
    total = sum(requested)
    if total <= available:
        return list(requested)
    sizes = [s * available // total for s in requested]
    sizes[0] += available - sum(sizes)
    warnings.warn(
        f"only {available} usable items for the requested {dict(zip(names, requested))} "
        f"(total {total}); scaled down to {dict(zip(names, sizes))}",
        stacklevel=3,
    )
    return sizes


def summarize(items: Sequence[str], limit: int = 10) -> str:
    """``"a, b, c (and 7 more)"``: a short list for warnings and errors."""
    shown = ", ".join(str(x) for x in items[:limit])
    more = len(items) - limit
    return shown + (f" (and {more} more)" if more > 0 else "")
