from __future__ import annotations

import random

import pytest

from sonus.data.sampler import DurationBucketSampler, EpochSampler


def _durations(n=500, seed=0):
    rng = random.Random(seed)
    return [rng.uniform(0.5, 4.0) for _ in range(n)]


def test_every_index_once_and_budget_respected():
    d = _durations()
    s = DurationBucketSampler(d, max_duration=30.0, max_batch_size=16, seed=1)
    batches = list(s)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(d)))
    for b in batches:
        assert max(d[i] for i in b) * len(b) <= 30.0 + 1e-9 and len(b) <= 16
    assert s.padding_fraction() < 0.10  # buckets keep padding low


def test_epochs_differ_and_are_reproducible():
    d = _durations()
    s = DurationBucketSampler(d, max_duration=30.0, seed=3)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1
    s.set_epoch(0)
    assert list(s) == e0


def test_ranks_get_disjoint_equal_shares():
    d = _durations()
    shards = [list(DurationBucketSampler(d, 30.0, seed=5, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    a = {i for b in shards[0] for i in b}
    b = {i for b in shards[1] for i in b}
    assert not a & b


def test_too_long_utterance_is_reported():
    with pytest.raises(ValueError, match="longer than max_duration"):
        DurationBucketSampler([1.0, 50.0], max_duration=30.0)


def test_sorted_epochs_go_short_to_long_then_shuffle():
    d = _durations()
    rank = {i: r for r, i in enumerate(sorted(range(len(d)), key=lambda i: d[i]))}

    def bucket(batch):  # 500 utterances in 10 buckets of 50
        return rank[batch[0]] // 50

    s = DurationBucketSampler(d, max_duration=30.0, seed=2, sorted_epochs=1)
    order = [bucket(b) for b in s]
    assert order == sorted(order) and len(set(order)) == 10  # epoch 0: bucket by bucket, shortest first
    assert sorted(i for b in s for i in b) == list(range(len(d)))
    s.set_epoch(1)
    order = [bucket(b) for b in s]
    assert order != sorted(order)  # then shuffled as usual


def test_a_fraction_sorts_the_start_of_an_epoch_only():
    d = _durations()

    def longest(batch):
        return max(d[i] for i in batch)

    s = DurationBucketSampler(d, max_duration=30.0, seed=2, sorted_epochs=0.3)
    batches = list(s)
    k = round(0.3 * len(batches))
    head = [longest(b) for b in batches[:k]]
    assert head == sorted(head) and head[0] < 1.0 and head[-1] > 3.5  # short to long, over all lengths
    tail = [longest(b) for b in batches[k:]]
    assert tail != sorted(tail)  # the rest shuffled
    assert sorted(i for b in batches for i in b) == list(range(len(d)))
    plain = DurationBucketSampler(d, max_duration=30.0, seed=2)
    assert sorted(map(tuple, batches)) == sorted(map(tuple, plain))  # the same batches, reordered
    s.set_epoch(1)
    plain.set_epoch(1)
    assert list(s) == list(plain)  # later epochs as without it


def test_resume_skips_into_the_epoch_once():
    """A run resumed mid-epoch: the next iteration is the rest of the same epoch, len() stays the
    epoch's (the trainer counts the skipped batches as done), and the epoch after is whole."""
    s = DurationBucketSampler(_durations(), max_duration=30.0, seed=3, num_replicas=2, rank=1)
    s.set_epoch(1)
    whole = list(s)
    s.resume(7)
    assert len(s) == len(whole) and list(s) == whole[7:]
    assert list(s) == whole
    s.resume(len(whole))
    assert list(s) == []
    with pytest.raises(ValueError, match="cannot resume after"):
        s.resume(len(whole) + 1)


def test_epoch_sampler_shuffles_per_epoch_from_its_seed_and_resumes():
    data = list(range(50))
    a, b = EpochSampler(data, seed=4), EpochSampler(data, seed=4)
    e0 = list(a)
    assert sorted(e0) == data and e0 != data and list(b) == e0  # the seed's, not the global stream's
    a.set_epoch(1)
    e1 = list(a)
    assert e1 != e0 and sorted(e1) == data
    a.resume(12)
    assert list(a) == e1[12:] and len(a) == 50
    halves = [list(EpochSampler(data, num_replicas=2, rank=r, seed=4)) for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == data
