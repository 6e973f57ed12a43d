"""Random float64 reducer inputs shared by the reducer tests: tokens, sizes, queries and keys."""

from __future__ import annotations

import zlib

import torch

BATCH, DIM, HEADS = 3, 12, 2


def seed_of(*parts) -> int:
    """A stable seed per test case (parametrize ids), so a failure reproduces on its own."""
    return zlib.crc32(repr(parts).encode())


def random_inputs(seed: int, prefix: int, n_tok: int, sizes: str = "random", batch: int = BATCH):
    """x [B, N, DIM], size [B, N, 1] (all ones, or 1..4), q and k [B, HEADS, N, DIM / HEADS]."""
    gen = torch.Generator().manual_seed(seed)
    n = prefix + n_tok
    x = torch.randn(batch, n, DIM, generator=gen, dtype=torch.float64)
    if sizes == "ones":
        size = torch.ones(batch, n, 1, dtype=torch.float64)
    else:
        size = torch.randint(1, 5, (batch, n, 1), generator=gen).double()
    q = torch.randn(batch, HEADS, n, DIM // HEADS, generator=gen, dtype=torch.float64)
    k = torch.randn(batch, HEADS, n, DIM // HEADS, generator=gen, dtype=torch.float64)
    return x, size, q, k
