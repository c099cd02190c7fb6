"""The embedded backend's model threads: coalesced interactive predictions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from allxai.server.backends.base import ModelSpec
from allxai.server.backends.embedded import EmbeddedBackend
from tests.conftest import INPUT_SIZE


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)


async def test_concurrent_classifications_share_model_calls_with_the_same_answers(model_base: Path) -> None:
    # In the embedded backend: requests that queue while the model threads are busy are coalesced.
    backend = EmbeddedBackend(model_base, threads=1)
    try:
        await backend.start()
        info = await backend.resolve(ModelSpec())
        images = _images(24, seed=4)
        alone = [await backend.predict(info, images[i : i + 1], timeout=30) for i in range(len(images))]
        coalescer = backend._entry(info).coalescer
        before = coalescer.calls
        together = await asyncio.gather(
            *(backend.predict(info, images[i : i + 1], timeout=30) for i in range(len(images)))
        )
        assert coalescer.calls - before < len(images)  # some requests shared a call
        for one, other in zip(alone, together, strict=True):
            # The rows end with the domain score, whose scale is not the probabilities': relative too.
            np.testing.assert_allclose(one, other, rtol=1e-5, atol=1e-5)
        # A caller that gives up leaves no trace: the others still get their answers.
        slow = asyncio.ensure_future(backend.predict(info, _images(64, seed=5), timeout=30))
        gone = asyncio.ensure_future(backend.predict(info, images[:1], timeout=30))
        await asyncio.sleep(0)
        gone.cancel()
        assert (await slow).shape == (64, info.row_width)  # the probabilities, then the domain score
    finally:
        await backend.close()
