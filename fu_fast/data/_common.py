"""Helpers shared by the data sets: option checks, error lines and derived random generators."""

import numpy as np
import torch



def one_line(error: Exception) -> str:
    """An exception as "Type: first line of its message" (a reader's messages may span lines, or be empty)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def generator(seed: int, *keys: int) -> torch.Generator:
    """A torch.Generator for the stream named by (seed, *keys).

    numpy's SeedSequence mixes the integers, so streams for neighbouring seeds or keys
    are unrelated (seed 1 split 0 and seed 0 split 1 do not collide, as seed + key would).
    """
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))
