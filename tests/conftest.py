"""Shared fixtures: synthetic canonical datasets built once per session, and one-thread torch.

Synthetic studies are the generator's full-field mammograms scaled down (``datasets.synthetic``);
a dataset is generated on first use and shared by every test that asks for the same settings, so
the suite pays for each one once. Tests that write into a dataset copy it first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datasets.synthetic import generate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """torch on one thread for the test (small models run faster so on a shared CPU), then back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """``synthetic_dataset(n=5, seed=3, height=512, width=416, **kw) -> Path`` of a canonical folder.

    Folders are generated once per distinct settings and shared for the session: treat them as
    read-only.
    """
    made: dict[tuple, Path] = {}

    def build(n: int = 5, seed: int = 3, height: int = 512, width: int = 416, **kw) -> Path:
        key = (n, seed, height, width, tuple(sorted((k, repr(v)) for k, v in kw.items())))
        if key not in made:
            out = tmp_path_factory.mktemp(f"synthetic_n{n}_s{seed}_{height}x{width}")
            made[key] = Path(generate(out, n=n, seed=seed, height=height, width=width,
                                      progress=False, **kw))
        return made[key]

    return build


@pytest.fixture(scope="session")
def synthetic_root(synthetic_dataset) -> Path:
    """The default small synthetic dataset: 5 studies (10 images) of 512 x 416 pixels, seed 3."""
    return synthetic_dataset()
