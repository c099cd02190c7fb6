"""Shared fixtures: a real tiny model exported under the contract, and a real gateway on a free port."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")

#: The repository root, and the shared data beside it.
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
INPUT_SIZE = 48


def png_bytes(array: np.ndarray, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ALL-Net trained for one epoch on synthetic cells, exported as <base>/allnet/1."""
    from allxai.trainer.config import load_config
    from allxai.trainer.synthetic import make_dataset
    from allxai.trainer.train import run

    data = make_dataset(tmp_path_factory.mktemp("synthetic"), per_class=16, size=INPUT_SIZE, seed=1)
    base = tmp_path_factory.mktemp("models")
    reports = tmp_path_factory.mktemp("reports")
    config = load_config(
        None,
        data=data,
        layout="folder",
        out=base,
        name="allnet",
        version=1,
        input_size=INPUT_SIZE,
        epochs=1,
        seed=1,
        reports=reports,
    )
    run(config)
    return base


#: The cell model's input size and its synthetic fields' size.
CELL_INPUT, CELL_FIELD = 32, 96


@pytest.fixture(scope="session")
def cell_model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cell-centred ALL-Net (``input = "cell"``) trained for one epoch on synthetic fields, as
    <base>/allnet-cell/1: its card carries the crop recipe, the stain target and the scale range."""
    from allxai.trainer.config import load_config
    from allxai.trainer.synthetic import make_dataset
    from allxai.trainer.train import run

    data = make_dataset(tmp_path_factory.mktemp("cell-fields"), per_class=16, size=CELL_FIELD, seed=2)
    base = tmp_path_factory.mktemp("cell-models")
    config = load_config(
        None,
        data=data,
        layout="folder",
        out=base,
        name="allnet-cell",
        version=1,
        input="cell",
        input_size=CELL_INPUT,
        cells_per_field=2,
        augment="cell",
        epochs=1,
        seed=2,
        reports=tmp_path_factory.mktemp("cell-reports"),
    )
    run(config)
    return base


@pytest.fixture(scope="session")
def cell_png() -> bytes:
    from allxai.trainer.synthetic import make_cell_image

    return png_bytes(make_cell_image(3, INPUT_SIZE, np.random.default_rng(5)))


@dataclass
class RunningGateway:
    target: str
    port: int
    loop: asyncio.AbstractEventLoop
    gateway: object


class GatewayThread:
    """A real grpc.aio gateway on its own event loop in a thread; ``started`` once it listens."""

    def __init__(self, settings: object, backend: object | None = None) -> None:
        self.settings = settings
        self.backend = backend
        self.started: Future[RunningGateway] = Future()
        self.serving: Future[None] = Future()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)

    def _run(self) -> None:
        from allxai.server.app import Gateway, make_backend

        async def main() -> None:
            gw = Gateway(self.settings, self.backend or make_backend(self.settings))  # type: ignore[arg-type]
            target = f"127.0.0.1:{gw.port}"
            self.started.set_result(RunningGateway(target, gw.port, asyncio.get_running_loop(), gw))
            starting = asyncio.create_task(gw.start())
            stopping = asyncio.create_task(asyncio.to_thread(self._stop.wait))
            try:
                await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if starting.done():
                    starting.result()
                    self.serving.set_result(None)
                    await stopping
                else:
                    starting.cancel()
            finally:
                self._stop.set()  # lets the waiting thread end even when start() failed
                await gw.stop(grace=1)

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001  (surfaced through the futures)
            for future in (self.started, self.serving):
                if not future.done():
                    future.set_exception(exc)

    def start(self, wait_serving: bool = True, timeout: float = 120) -> RunningGateway:
        self._thread.start()
        running = self.started.result(timeout=timeout)
        if wait_serving:
            self.serving.result(timeout=timeout)
        return running

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def gateway_settings(model_base: Path, **overrides: object) -> object:
    from allxai.server.settings import Settings

    base: dict[str, object] = {
        "model_base_path": model_base,
        "host": "127.0.0.1",
        "port": 0,
        "max_concurrent_explanations": 4,
        "metrics_port": 0,
    }
    return Settings(**{**base, **overrides})


@pytest.fixture(scope="session")
def gateway(model_base: Path) -> Iterator[RunningGateway]:
    """The real grpc.aio gateway with the embedded backend, on its own event loop in a thread."""
    runner = GatewayThread(gateway_settings(model_base))
    yield runner.start()
    runner.stop()
