"""A SavedModel from elsewhere: only ``serving_default``, its own tensor names, no model card.

The model contract says such a model must still work: the gateway takes the input size and tensor
names from the signature, the class names from a card file, the ``ALLXAI_CLASS_NAMES`` setting or
``class_0 ..``, and composes an explanation's perturbed images itself. Shown here through the real
gateway over both backends (TensorFlow Serving's protocol from ``tests/support/tfserving_fake.py``), plus the
refusals, and the shared derivation on its own (no TensorFlow).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from allxai.contract import names as contract
from allxai.server.backends.base import ModelSpec
from allxai.server.backends.embedded import EmbeddedBackend
from allxai.server.backends.signature import (
    CardSource,
    ContractError,
    TensorSpec,
    derive_model_info,
)
from allxai.server.backends.tfserving import TFServingBackend
from allxai.server.errors import BackendError, BackendUnavailable
from allxai.v1 import diagnosis_pb2 as pb
from allxai.v1 import diagnosis_pb2_grpc as pb_grpc
from tests.conftest import GatewayThread, gateway_settings, png_bytes
from tests.support.tfserving_fake import FakeTFServing

SIZE = 32
CLASSES = 3
NAME = "foreign"


def _export(path: Path, dtype: str = "uint8", size: int | None = SIZE, classes: int = CLASSES) -> None:
    """A tiny Keras model saved with only ``serving_default``: input ``pixels``, output ``scores``."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), dtype=dtype)
    hidden = keras.layers.Rescaling(1 / 255)(inputs)  # scaling inside the graph, as the contract asks
    hidden = keras.layers.Conv2D(4, 3, activation="relu")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(hidden))
    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], dtype, name="pixels")])
    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": module.model(pixels)}

    tf.saved_model.save(module, str(path), signatures={contract.SERVING_SIGNATURE: serve})


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("foreign")
    _export(base / NAME / "1")
    return base


@pytest.fixture(scope="module")
def cell() -> np.ndarray:
    from allxai.trainer.synthetic import make_cell_image

    return make_cell_image(3, SIZE, np.random.default_rng(5))


def _reference(foreign: Path, image: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    serve = tf.saved_model.load(str(foreign / NAME / "1")).signatures[contract.SERVING_SIGNATURE]
    return np.asarray(serve(pixels=tf.constant(image[None]))["scores"].numpy()[0])


@asynccontextmanager
async def _gateway(settings: object) -> AsyncIterator[pb_grpc.DiagnosisServiceStub]:
    """The real gateway in its own thread; an aio client here, so a fake on this loop keeps answering."""
    runner = GatewayThread(settings)
    running = await asyncio.to_thread(runner.start)
    try:
        async with grpc.aio.insecure_channel(running.target) as channel:
            yield pb_grpc.DiagnosisServiceStub(channel)
    finally:
        await asyncio.to_thread(runner.stop)


@asynccontextmanager
async def _backend_settings(kind: str, base: Path, **overrides: object) -> AsyncIterator[object]:
    """Gateway settings for ``kind``; for ``tfserving``, a model server over ``base`` on this loop."""
    if kind == "embedded":
        yield gateway_settings(base, **overrides)
        return
    fake = FakeTFServing(base)
    port = await fake.start()
    try:
        yield gateway_settings(
            base,
            backend="tfserving",
            tfserving_target=f"127.0.0.1:{port}",
            tfserving_models=[NAME],
            **overrides,
        )
    finally:
        await fake.stop()


async def _info(stub: pb_grpc.DiagnosisServiceStub) -> tuple[Any, dict[str, Any]]:
    info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    return info, json.loads(info.model_card_json)


@pytest.mark.parametrize("kind", ["embedded", "tfserving"])
async def test_a_cardless_model_classifies_and_explains(kind: str, foreign: Path, cell: np.ndarray) -> None:
    png = png_bytes(cell)
    expected = _reference(foreign, cell)
    generic = [f"class_{i}" for i in range(CLASSES)]
    async with _backend_settings(kind, foreign) as settings, _gateway(settings) as stub:
        info, card = await _info(stub)
        assert list(info.class_names) == generic
        assert (info.input_height, info.input_width) == (SIZE, SIZE)
        assert not info.has_composition_signature and info.model.name == NAME
        assert card["source"] == {
            "card": "none",
            "class_names": "generic (no card and no setting)",
            "input_size": "the 'serving_default' signature",
        }
        assert card["signature"] == {"input": "pixels", "output": "scores"}

        # Classify: the model's own answer for the image, under the generic names.
        reply = await stub.Classify(pb.ClassifyRequest(image=pb.Image(data=png)), timeout=10)
        scores = [s.score for s in reply.classification.scores]
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        assert reply.classification.label == generic[int(np.argmax(expected))]
        # Without a gate or a calibration in the card, the answer says no check was made: no flag, no set.
        for absent in ("in_domain", "domain_score", "domain_threshold", "coverage"):
            assert not reply.classification.HasField(absent), absent
        assert list(reply.classification.prediction_set) == []
        with pytest.raises(grpc.aio.AioRpcError) as no_sets:
            await stub.Classify(pb.ClassifyRequest(image=pb.Image(data=png), alpha=0.1), timeout=10)
        assert no_sets.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "carries no conformal calibration" in (no_sets.value.details() or "")

        # No class is known to be normal, so a blast fraction would count every cell: refused.
        images = [pb.Image(data=png, image_id=str(i)) for i in range(3)]
        with pytest.raises(grpc.aio.AioRpcError) as no_normal:
            await stub.ClassifySpecimen(pb.ClassifySpecimenRequest(images=images), timeout=10)
        assert no_normal.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "names no normal class" in (no_normal.value.details() or "")

        # Explain: no compose signature, so the gateway builds the perturbed images itself.
        options = pb.ExplainOptions(
            num_samples=50,
            seed=1,
            segmentation=pb.SEGMENTATION_SLIC,  # quickshift finds one superpixel in 32x32
            segmentation_params={"n_segments": 16},
        )
        explained = await stub.Explain(
            pb.ExplainRequest(image=pb.Image(data=png), options=options), timeout=30
        )
        assert explained.explanation.composition == pb.COMPOSITION_GATEWAY
        assert explained.explanation.num_samples == 50 and explained.explanation.weights
        options.composition = pb.COMPOSITION_MODEL
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Explain(pb.ExplainRequest(image=pb.Image(data=png), options=options), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "has no compose signature" in (refused.value.details() or "")

    # Names from the setting, when the model carries no card.
    names = ["normal", "blast", "other"]
    async with (
        _backend_settings(kind, foreign, class_names={NAME: names}) as settings,
        _gateway(settings) as stub,
    ):
        info, card = await _info(stub)
        assert list(info.class_names) == names
        assert card["source"]["class_names"] == "the setting ALLXAI_CLASS_NAMES"
        reply = await stub.Classify(pb.ClassifyRequest(image=pb.Image(data=png)), timeout=10)
        assert reply.classification.label == names[int(np.argmax(expected))]
        # "normal" is normal by the trainer's rule, so a specimen has a blast fraction.
        images = [pb.Image(data=png, image_id=str(i)) for i in range(3)]
        specimen = await stub.ClassifySpecimen(pb.ClassifySpecimenRequest(images=images), timeout=10)
        assert len(specimen.cells) == 3 and sum(c.count for c in specimen.summary.counts) == 3
        assert info.normal_class_names == ["normal"]
        normal_share = 1.0 if reply.classification.label == "normal" else 0.0
        assert specimen.summary.blast_fraction == pytest.approx(1.0 - normal_share)


async def test_embedded_names_from_the_card_file_win(foreign: Path, cell: np.ndarray, tmp_path: Path) -> None:
    base = tmp_path / "models"
    shutil.copytree(foreign, base)
    card_file = base / NAME / "1" / contract.CARD_FILE
    card_file.parent.mkdir(parents=True, exist_ok=True)
    card_file.write_text(
        json.dumps({"class_names": ["Benign", "Early", "Pre"], "normal_class_names": ["Benign"]})
    )
    settings = gateway_settings(base, class_names={NAME: ["a", "b", "c"]})
    async with _gateway(settings) as stub:
        info, card = await _info(stub)
        assert list(info.class_names) == ["Benign", "Early", "Pre"]
        assert list(info.normal_class_names) == ["Benign"]
        assert card["source"] == {
            "card": contract.CARD_FILE,
            "class_names": contract.CARD_FILE,
            "input_size": "the 'serving_default' signature",
        }
        reply = await stub.Classify(pb.ClassifyRequest(image=pb.Image(data=png_bytes(cell))), timeout=10)
        assert reply.classification.label == info.class_names[int(np.argmax(_reference(foreign, cell)))]


async def test_models_that_break_the_contract_are_refused_in_words(foreign: Path, tmp_path: Path) -> None:
    # A wrong number of class names in the setting: both backends refuse, naming model and counts.
    wrong = {NAME: ["normal", "blast"]}
    embedded = EmbeddedBackend(foreign, class_names=wrong)
    with pytest.raises(
        BackendUnavailable, match=r"model foreign version 1: .*gives 2 class names.* 3 classes"
    ):
        await embedded.start()
    await embedded.close()
    fake = FakeTFServing(foreign)
    port = await fake.start()
    remote = TFServingBackend(f"127.0.0.1:{port}", [NAME], class_names=wrong)
    try:
        with pytest.raises(BackendError, match=r"model foreign version 1: .*gives 2 class names"):
            await remote.start()
    finally:
        await remote.close()
        await fake.stop()

    # float32 pixels: the contract wants uint8 with scaling inside the graph.
    floats = tmp_path / "floats"
    _export(floats / "floaty" / "1", dtype="float32")
    embedded = EmbeddedBackend(floats)
    with pytest.raises(BackendUnavailable, match=r"model floaty version 1: .*uint8 .*'pixels' is float32"):
        await embedded.start()
    await embedded.close()
    fake = FakeTFServing(floats)
    port = await fake.start()
    remote = TFServingBackend(f"127.0.0.1:{port}", ["floaty"])
    try:
        with pytest.raises(
            BackendError, match=r"model floaty version 1: .*'pixels' is float32 \[\?, 32, 32, 3\]"
        ):
            await remote.start()
    finally:
        await remote.close()
        await fake.stop()

    # An open input size is refused unless a card file gives it.
    open_size = tmp_path / "open"
    _export(open_size / "anysize" / "1", size=None)
    embedded = EmbeddedBackend(open_size)
    with pytest.raises(BackendUnavailable, match="leaves the input size open"):
        await embedded.start()
    await embedded.close()
    (open_size / "anysize" / "1" / "assets.extra").mkdir()
    (open_size / "anysize" / "1" / contract.CARD_FILE).write_text('{"input_size": [40, 40]}')
    embedded = EmbeddedBackend(open_size)
    try:
        await embedded.start()
        info = await embedded.resolve(ModelSpec())
        assert info.input_size == (40, 40) and info.class_names == ("class_0", "class_1", "class_2")
        assert (await embedded.predict(info, np.zeros((2, 40, 40, 3), np.uint8), 10)).shape == (2, 3)
    finally:
        await embedded.close()


async def test_the_fake_refuses_an_output_its_signature_lacks_as_tensorflow_serving_does(
    foreign: Path,
) -> None:
    # The contract's output name is wrong for this model: the gateway must send the one it found.
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    fake = FakeTFServing(foreign)
    port = await fake.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = predict_pb2.PredictRequest(output_filter=[contract.OUTPUT])
            request.model_spec.name = NAME
            request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(np.zeros((1, SIZE, SIZE, 3), np.uint8)))
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Predict(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "output tensor alias not found in signature: probabilities" in (
                refused.value.details() or ""
            )
            del request.output_filter[:]
            request.output_filter.append("scores")
            assert (await stub.Predict(request, timeout=10)).outputs["scores"].tensor_shape.dim[1].size == 3
    finally:
        await fake.stop()


def test_the_class_names_setting_refuses_blanks_and_repeats() -> None:
    from pydantic import ValidationError

    from allxai.server.settings import Settings

    assert Settings(class_names={NAME: ["a", "b"]}).class_names == {NAME: ["a", "b"]}
    with pytest.raises(ValidationError, match="names a class twice"):
        Settings(class_names={NAME: ["a", "a"]})
    with pytest.raises(ValidationError, match="list of non-empty strings"):
        Settings(class_names={NAME: ["a", " "]})


# --- the shared derivation, without TensorFlow -----------------------------------------------------


def _derive(
    inputs: list[TensorSpec] | None = None,
    outputs: list[TensorSpec] | None = None,
    card: CardSource | None = None,
    names: list[str] | None = None,
) -> Any:
    return derive_model_info(
        "m",
        2,
        inputs if inputs is not None else [TensorSpec("x", "uint8", (None, 8, 6, 3))],
        outputs if outputs is not None else [TensorSpec("y", "float32", (None, 2))],
        card=card,
        configured_names=names,
        has_composition=False,
        available_versions=(2,),
    )


def test_the_derivation_reads_sizes_names_and_tensor_keys() -> None:
    info = _derive()
    assert (info.input_size, info.class_names) == ((8, 6), ("class_0", "class_1"))
    assert (info.serving_input, info.serving_output) == ("x", "y")
    assert _derive(names=["a", "b"]).class_names == ("a", "b")
    card = CardSource({"class_names": ["n", "b"], "input_size": [8, 6], "x": 1}, "card.json")
    assert _derive(card=card, names=["a", "b"]).class_names == ("n", "b")
    # Our own exports: the card from the model_card signature comes back as it was written.
    own = CardSource({"class_names": ["n", "b"], "input_size": [8, 6]}, "sig", is_signature=True)
    assert json.loads(_derive(card=own).card_json) == own.card
    # Several outputs: the one named "probabilities" is taken.
    outputs = [TensorSpec("logits", "float32", (None, 2)), TensorSpec("probabilities", "float32", (None, 2))]
    assert _derive(outputs=outputs).serving_output == "probabilities"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda: _derive(inputs=[]), "exactly one input"),
        (lambda: _derive(inputs=[TensorSpec("x", "uint8", (None, 8, 6))]), r"\[\?, 8, 6\]"),
        (lambda: _derive(inputs=[TensorSpec("x", "uint8", (None, 8, 6, 4))]), "uint8 images"),
        (lambda: _derive(inputs=[TensorSpec("x", "uint8", None)]), "of unknown rank"),
        (lambda: _derive(inputs=[TensorSpec("x", "uint8", (None, None, 6, 3))]), "input size open"),
        (
            lambda: _derive(
                outputs=[TensorSpec("a", "float32", (None, 2)), TensorSpec("b", "float32", (None, 2))]
            ),
            r"it gives 2 \(a, b\)",
        ),
        (lambda: _derive(outputs=[TensorSpec("y", "int64", (None, 2))]), "floating-point"),
        (lambda: _derive(outputs=[TensorSpec("y", "float32", (None, None))]), "set ALLXAI_CLASS_NAMES"),
        (lambda: _derive(names=["a", "b", "c"]), "gives 3 class names, but the model gives scores for 2"),
        (lambda: _derive(card=CardSource([1], "card.json")), r"card \(card.json\) is not a JSON object"),
        (lambda: _derive(card=CardSource({"input_size": [9, 6]}, "card.json")), "input size 9x6, but"),
        (lambda: _derive(card=CardSource({"class_names": ["a", "a"]}, "card.json")), "names a class twice"),
        (
            lambda: _derive(card=CardSource({"normal_class_names": ["Benign"]}, "card.json")),
            r"normal_class_names \['Benign'\] must list some of its classes \(class_0, class_1\)",
        ),
    ],
)
def test_the_derivation_refuses_what_breaks_the_contract(change: Callable[[], Any], words: str) -> None:
    with pytest.raises(ContractError, match=r"^model m version 2: .*" + words):
        change()
