"""The engine's seeded data order: every item and step draws from seeds derived from (seed, epoch, index, ...),
so the data of a step does not depend on workers, ranks or restarts."""

import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cebench.errors import CebenchError


def derive_seed(*numbers):
    """A 63-bit seed from a tuple of non-negative ints (seed, epoch, index, ...), stable across runs and hosts."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seed_globals(seed):
    """Seed torch (CPU and CUDA), numpy and random from one derived seed."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class StepBatchSampler(Sampler):
    """This rank's micro-batches of (index, item_seed) for optimiser steps [start, end)."""

    def __init__(self, n_items, config, runtime, start_step, end_step):
        self.n_items, self.config, self.start, self.end = n_items, config, start_step, end_step
        self.rank, self.world = runtime.rank, runtime.world_size
        self.chunks = runtime.world_size * config.accum_steps
        if config.batch_size % self.chunks:
            raise CebenchError(f"batch size {config.batch_size} is not divisible by world size {self.world} x "
                               f"accumulation steps {config.accum_steps}")
        if n_items < config.batch_size:
            raise CebenchError(f"the training set has {n_items} items, fewer than one batch of {config.batch_size}")
        self.steps_per_epoch = n_items // config.batch_size
        self._perm = (None, None)

    def _permutation(self, epoch):
        if self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(derive_seed(self.config.seed, 1, epoch))
            self._perm = (epoch, torch.randperm(self.n_items, generator=gen).tolist())
        return self._perm[1]

    def __iter__(self):
        size = self.config.batch_size // self.chunks
        for step in range(self.start, self.end):
            epoch, pos = divmod(step, self.steps_per_epoch)
            batch = self._permutation(epoch)[pos * self.config.batch_size:(pos + 1) * self.config.batch_size]
            for micro in range(self.config.accum_steps):
                chunk = micro * self.world + self.rank
                yield [(i, derive_seed(self.config.seed, 2, epoch, i)) for i in batch[chunk * size:(chunk + 1) * size]]

    def __len__(self):
        return (self.end - self.start) * self.config.accum_steps


class SeededItems(Dataset):
    """Wraps a dataset so that item (index, seed) is produced under global generators seeded with `seed`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        seed_globals(seed)
        return self.dataset[index]
