"""Which clips each data-parallel rank reads in an epoch.

A plain `DistributedSampler` deals every shard's clips to every rank. For a cache in object storage each
rank copies whole shards into its bounded local folder (`store.ShardStore`), so every rank would download
the whole dataset every epoch. `ShardLocalSampler` keeps DistributedSampler's contract (seeded by seed and
epoch, `num_samples` per rank, every clip once per epoch but the padding) and gives each rank a contiguous
run of whole shards instead: about 1/world of them, the two at its edges shared with its neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DistributedSampler

from .shards import ShardedAVDataset


class ShardLocalSampler(DistributedSampler):
    """Each epoch: the shards in a random order, cut into `num_replicas` equal runs of clips (padded, as
    DistributedSampler pads, with the last clips again), rank r's run shuffled. Clip i lives in shard
    i // shard_size."""

    def __init__(self, dataset: Sized, shard_size: int, num_replicas: int, rank: int, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.shard_size = shard_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        n = len(self.dataset)
        shards = torch.randperm(math.ceil(n / self.shard_size), generator=g).tolist()
        order = [i for s in shards for i in range(s * self.shard_size, min(n, (s + 1) * self.shard_size))]
        padding = self.total_size - n
        order += (order[::-1] * math.ceil(padding / n))[:padding]  # the last run's own clips again
        mine = order[self.rank * self.num_samples : (self.rank + 1) * self.num_samples]
        return iter([mine[j] for j in torch.randperm(len(mine), generator=g).tolist()])


def train_sampler(dataset: Sized, num_replicas: int, rank: int, seed: int) -> DistributedSampler:
    """This rank's sampler of a train split: shard-local for a compressed cache in object storage, where
    each shard a rank touches is a download; a plain seeded DistributedSampler otherwise."""
    if isinstance(dataset, ShardedAVDataset) and dataset.store.remote:
        return ShardLocalSampler(dataset, dataset.header.shard_size, num_replicas, rank, seed)
    return DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
