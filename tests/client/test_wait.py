"""``--wait`` (wait_for_ready) waits through a gateway that is up but still loading its models."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from allxai.client import Client
from allxai.client.aio import AsyncClient
from allxai.client.cli import main
from tests.conftest import GatewayThread, gateway_settings

#: More refusals than gRPC's own retries (at most 5 attempts) would ever make.
REFUSALS = 8


class _Loading:
    """The real embedded backend, whose models load only once the test says so: until then the gateway
    listens and answers UNAVAILABLE ("the models are still loading")."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.release = threading.Event()
        self.refused = 0
        self.waited_through = threading.Event()  # set at the REFUSALS-th refusal
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def start(self) -> None:
        await asyncio.to_thread(self.release.wait)
        await self._inner.start()

    async def resolve(self, spec: Any, timeout: float | None = None) -> Any:
        try:
            return await self._inner.resolve(spec, timeout)
        except Exception:
            with self._lock:
                self.refused += 1
                if self.refused >= REFUSALS:
                    self.waited_through.set()
            raise


@pytest.fixture
def loading(model_base: Path) -> Iterator[tuple[str, _Loading]]:
    """A gateway listening on a free port whose models have not loaded: its target and its backend."""
    from allxai.server.app import make_backend

    settings = gateway_settings(model_base)
    backend = _Loading(make_backend(settings))  # type: ignore[arg-type]
    thread = GatewayThread(settings, backend)
    running = thread.start(wait_serving=False)
    try:
        yield running.target, backend
    finally:
        backend.release.set()  # the loading thread must end for the gateway's loop to stop
        thread.stop()


def test_without_wait_a_loading_gateway_is_said_to_be_up_and_loading(
    loading: tuple[str, _Loading], cell_png: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, backend = loading
    image = tmp_path / "cell.png"
    image.write_bytes(cell_png)
    assert main(["classify", "--target", target, str(image)]) == 1
    err = capsys.readouterr().err
    assert "UNAVAILABLE: the models are still loading" in err
    assert f"the gateway at {target} is up but still loading its models; --wait waits for them" in err
    assert "is the gateway running" not in err
    assert not backend.release.is_set()  # it answered at once, the models never asked to load

    # A short deadline with --wait ends in the same words, saying the deadline passed while it waited.
    assert main(["classify", "--target", target, "--wait", "--timeout", "1.5", str(image)]) == 1
    err = capsys.readouterr().err
    assert "the models are still loading; still so when the deadline (1.5 s) passed" in err
    assert "is up but still loading its models; a longer --timeout waits longer" in err
    assert "is the gateway running" not in err


def test_with_wait_a_call_waits_until_the_models_are_loaded(
    loading: tuple[str, _Loading], cell_png: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, backend = loading
    image = tmp_path / "cell.png"
    image.write_bytes(cell_png)

    async def explain_async() -> int:
        async with AsyncClient(target, explain_timeout=120, wait_for_ready=True) as client:
            return (await client.explain(cell_png, num_samples=40, seed=1)).num_samples

    def classify_sdk() -> str:
        with Client(target, timeout=120, wait_for_ready=True) as client:
            return client.classify(cell_png).label

    with ThreadPoolExecutor(3) as pool:
        cli = pool.submit(main, ["classify", "--target", target, "--wait", "--timeout", "120", str(image)])
        sdk = pool.submit(classify_sdk)
        aio = pool.submit(asyncio.run, explain_async())
        # Past the point where gRPC's retries would have given up, the calls are still waiting.
        assert backend.waited_through.wait(timeout=60)
        assert not (cli.done() or sdk.done() or aio.done())
        backend.release.set()
        assert cli.result(timeout=120) == 0
        assert sdk.result(timeout=120) in ("Benign", "Early", "Pre", "Pro")
        assert aio.result(timeout=120) == 40
    out = capsys.readouterr().out
    assert re.search(r" \d+\.\d%", out), out  # the classification line
