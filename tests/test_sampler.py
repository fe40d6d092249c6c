from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from qwen_audio.data.sampler import DurationBucketSampler


def random_durations(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 8.0, n)


def epoch_batches(sampler: DurationBucketSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_hand_worked_batches_one_and_two_ranks():
    # two buckets (1 s and 2 s clips); padded budget 4 s: four 1 s clips, or two 2 s clips, per
    # batch
    durations = [[1, 1, 1, 1, 2, 2, 2, 2]]
    single = DurationBucketSampler(durations, 4, num_buckets=2, shuffle=False)
    assert list(single) == [[0, 1, 2, 3], [4, 5], [6, 7]]
    # three batches for two ranks: the largest is split in two, so nothing is dropped or repeated
    ranks = [
        DurationBucketSampler(durations, 4, num_buckets=2, shuffle=False, rank=r, world_size=2)
        for r in (0, 1)
    ]
    assert [list(s) for s in ranks] == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_budget_every_example_once_disjoint_equal_counts(world_size):
    durations = random_durations(403)
    for epoch in (0, 1):
        per_rank = []
        for rank in range(world_size):
            sampler = DurationBucketSampler(
                [durations], 20.0, seed=3, rank=rank, world_size=world_size
            )
            batches = epoch_batches(sampler, epoch)
            assert len(batches) == len(sampler)
            assert all(len(b) * durations[b].max() <= 20.0 for b in batches)
            per_rank.append(batches)
        assert (
            len({len(b) for b in per_rank}) == 1
        )  # equal batch counts: no rank waits on a collective
        seen = [i for batches in per_rank for b in batches for i in b]
        assert sorted(seen) == list(
            range(len(durations))
        )  # every example exactly once across ranks


def test_drops_only_when_no_batch_can_be_split():
    durations = [
        [3.0, 3.0, 3.0]
    ]  # every clip fills a 4 s budget alone: 3 single-example batches, 2 ranks
    ranks = [DurationBucketSampler(durations, 4, rank=r, world_size=2) for r in (0, 1)]
    batches = [list(s) for s in ranks]
    assert [len(b) for b in batches] == [1, 1]
    assert len({i for b in batches for batch in b for i in batch}) == 2


def test_buckets_group_similar_durations():
    durations = random_durations(2000)

    def mean_spread(num_buckets):
        batches = list(DurationBucketSampler([durations], 30.0, num_buckets=num_buckets, seed=0))
        return np.mean([1 - durations[b].min() / durations[b].max() for b in batches if len(b) > 1])

    assert mean_spread(20) < 0.15 < 0.5 < mean_spread(1)


def test_deterministic_per_seed_and_epoch():
    durations = [random_durations(300)]
    a = DurationBucketSampler(durations, 16.0, seed=7)
    b = DurationBucketSampler(durations, 16.0, seed=7)
    assert epoch_batches(a, 4) == epoch_batches(b, 4)
    assert epoch_batches(a, 4) != epoch_batches(a, 5)
    assert epoch_batches(a, 4) != epoch_batches(DurationBucketSampler(durations, 16.0, seed=8), 4)


def test_sortagrad_epochs_go_shortest_bucket_first_then_shuffle():
    durations = random_durations(500)
    edges = np.quantile(
        durations, np.linspace(0, 1, 11)[1:-1]
    )  # the 10 buckets' bounds, as documented
    sampler = DurationBucketSampler([durations], 24.0, sortagrad_epochs=2, seed=1)

    def buckets(batch):
        return set(np.searchsorted(edges, durations[batch], side="right").tolist())

    for epoch in (0, 1):
        batches = epoch_batches(sampler, epoch)
        order = [buckets(b) for b in batches]
        assert all(len(b) == 1 for b in order)
        assert [min(b) for b in order] == sorted(min(b) for b in order)  # shortest bucket first
        assert sorted(i for b in batches for i in b) == list(range(500))  # still every example once
    assert epoch_batches(sampler, 0) != epoch_batches(
        sampler, 1
    )  # the clips inside a bucket are reshuffled
    order = [min(buckets(b)) for b in epoch_batches(sampler, 2)]
    assert order != sorted(
        order
    )  # from epoch 2 on the batch order is shuffled as without the option


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_exact_resume_mid_epoch(rank):
    durations = [random_durations(250, seed=1), random_durations(90, seed=2)]
    kwargs = dict(max_seconds=18.0, weights=[1.0, 2.0], seed=11, rank=rank, world_size=3)
    uninterrupted = DurationBucketSampler(durations, **kwargs)
    epoch1, epoch2 = epoch_batches(uninterrupted, 1), epoch_batches(uninterrupted, 2)

    interrupted = DurationBucketSampler(durations, **kwargs)
    interrupted.set_epoch(1)
    stream = iter(interrupted)
    consumed = [next(stream) for _ in range(5)]
    state = interrupted.state_dict()
    assert consumed == epoch1[:5] and state["epoch"] == 1 and state["batches_done"] == 5

    resumed = DurationBucketSampler(durations, **kwargs)  # a new process
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # as Lightning does at the start of the (resumed) epoch
    assert list(resumed) == epoch1[5:]
    assert epoch_batches(resumed, 2) == epoch2
    assert list(resumed) == epoch2  # a new iteration of the same epoch starts from its beginning


def test_weighted_mixture_draw():
    durations = [np.full(100, 1.0), np.full(300, 2.0)]
    sampler = DurationBucketSampler(durations, 10.0, weights=[3.0, 1.0], seed=0)
    counts = collections.Counter(i for b in epoch_batches(sampler, 0) for i in b)
    # epoch size stays 400: 300 from the 100 clips of manifest 0 (three full passes), 100 distinct
    # of manifest 1
    assert sorted(set(counts.values())) == [1, 3]
    assert {i for i, c in counts.items() if c == 3} == set(range(100))
    assert sum(1 for i in counts if i >= 100) == 100
    assert epoch_batches(sampler, 0) != epoch_batches(sampler, 1)


def test_works_as_dataloader_batch_sampler():
    durations = random_durations(64)
    sampler = DurationBucketSampler([durations], 12.0, seed=0)
    loader = DataLoader(torch.arange(64), batch_sampler=sampler)
    assert [t.tolist() for t in loader] == list(sampler)
    assert len(loader) == len(sampler)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"example 2 lasts 31.0 s, more than max_seconds=30"):
        DurationBucketSampler([[1.0, 2.0, 31.0]], 30)
    with pytest.raises(ValueError, match=r"example 1 has duration 0.0; must be > 0"):
        DurationBucketSampler([[1.0, 0.0]], 30)
    with pytest.raises(ValueError, match=r"weights: expected one per manifest \(2\), got \[1.0\]"):
        DurationBucketSampler([[1.0], [2.0]], 30, weights=[1.0])
    with pytest.raises(ValueError, match="sortagrad_epochs must be >= 0, got -1"):
        DurationBucketSampler([[1.0]], 30, sortagrad_epochs=-1)
    with pytest.raises(ValueError, match="rank must be in"):
        DurationBucketSampler([[1.0, 2.0]], 30, rank=2, world_size=2)
    state = DurationBucketSampler([[1.0, 2.0]], 30, world_size=1).state_dict()
    with pytest.raises(ValueError, match="cannot resume: state has world_size=1, this sampler 2"):
        DurationBucketSampler([[1.0, 2.0]], 30, rank=0, world_size=2).load_state_dict(state)


def test_lightning_sets_the_epoch_and_every_epoch_has_the_same_batch_count():
    from lightning.fabric.utilities.data import _set_sampler_epoch

    durations = [random_durations(200, seed=4), random_durations(100, seed=5)]
    for weights in (None, [1.0, 3.0]):
        sampler = DurationBucketSampler(durations, 20.0, weights=weights, seed=2)
        loader = DataLoader(torch.arange(300), batch_sampler=sampler)
        plans = []
        for epoch in range(4):
            _set_sampler_epoch(
                loader, epoch
            )  # what Lightning's fit loop calls at the start of each epoch
            plans.append([t.tolist() for t in loader])
            assert sampler.epoch == epoch and len(plans[-1]) == len(plans[0]) == len(loader)
        assert all(plans[i] != plans[j] for i in range(4) for j in range(i))


def test_a_state_saved_at_the_end_of_an_epoch_resumes_at_the_next():
    durations = [random_durations(60)]
    sampler = DurationBucketSampler(durations, 12.0, seed=1)
    sampler.set_epoch(2)
    state = {**sampler.state_dict(), "batches_done": len(sampler)}
    resumed = DurationBucketSampler(durations, 12.0, seed=1)
    resumed.load_state_dict(state)
    assert resumed.epoch == 3 and list(resumed) == epoch_batches(sampler, 3)
