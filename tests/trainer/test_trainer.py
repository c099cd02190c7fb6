"""The trainer: dataset errors, class weights, and an export that honours the model contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from allxai.contract import names as contract
from allxai.contract.preprocessing import prepare_image
from allxai.trainer.datasets import DatasetError, index_dataset
from allxai.trainer.loading import load_samples
from allxai.trainer.train import balanced_class_weights
from tests.conftest import INPUT_SIZE, png_bytes


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        index_dataset(tmp_path / "nope")


def test_empty_class_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DatasetError, match=r"class folder .*b holds no images"):
        index_dataset(tmp_path)


def test_unreadable_file_is_reported_not_dropped(tmp_path: Path) -> None:
    for value, name in enumerate(("a", "b")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ok.png").write_bytes(png_bytes(np.full((4, 4, 3), value, np.uint8)))
    (tmp_path / "b" / "broken.png").write_bytes(b"not an image")
    index = index_dataset(tmp_path)
    data = load_samples(index.samples, (8, 8))
    assert list(data.labels) == [0, 1]
    assert [(Path(p).name, "not a readable image" in why) for p, why in data.skipped] == [
        ("broken.png", True)
    ]


def test_balanced_class_weights() -> None:
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})


def test_export_follows_the_contract(model_base: Path, cell_png: bytes) -> None:
    import tensorflow as tf

    path = model_base / "allnet" / "1"
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) == {
        contract.SERVING_SIGNATURE,
        contract.COMPOSE_SIGNATURE,
        contract.CARD_SIGNATURE,
    }
    serve = loaded.signatures[contract.SERVING_SIGNATURE]
    spec = serve.structured_input_signature[1][contract.SERVING_INPUT]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, INPUT_SIZE, INPUT_SIZE, 3]

    card = json.loads(loaded.signatures[contract.CARD_SIGNATURE]()[contract.CARD_OUTPUT].numpy())
    assert card["class_names"] == ["Benign", "Early", "Pre", "Pro"]
    assert card["input_size"] == [INPUT_SIZE, INPUT_SIZE]
    assert card["normal_class_names"] == ["Benign"]
    assert json.loads((path / contract.CARD_FILE).read_text()) == card

    image = prepare_image(cell_png, (INPUT_SIZE, INPUT_SIZE))
    probs = serve(images=tf.constant(image[None]))[contract.OUTPUT].numpy()
    assert probs.shape == (1, 4)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)

    # The compose signature builds perturbed images next to the model: mask rows of ones give
    # back the image, rows of zeros the fill.
    segments = (np.arange(INPUT_SIZE * INPUT_SIZE).reshape(INPUT_SIZE, INPUT_SIZE) % 3).astype(np.int32)
    fill = np.full_like(image, 17)
    # 130 masks: two full chunks of the signature's 64 and a remainder.
    masks = np.random.default_rng(0).integers(0, 2, (130, 3)).astype(np.uint8)
    masks[:3] = [[1, 1, 1], [0, 0, 0], [1, 0, 1]]
    composed = loaded.signatures[contract.COMPOSE_SIGNATURE](
        image=tf.constant(image),
        fill=tf.constant(fill),
        segments=tf.constant(segments),
        masks=tf.constant(masks),
    )[contract.OUTPUT].numpy()
    from allxai.explainer.perturb import compose

    expected = serve(images=tf.constant(compose(image, fill, segments, masks)))[contract.OUTPUT].numpy()
    np.testing.assert_allclose(composed, expected, atol=1e-5)
    mixed = np.where(np.isin(segments, [0, 2])[..., None], image, fill)
    assert np.array_equal(compose(image, fill, segments, masks[2:3])[0], mixed)
    for n in (64, 1):
        assert loaded.signatures[contract.COMPOSE_SIGNATURE](
            image=tf.constant(image),
            fill=tf.constant(fill),
            segments=tf.constant(segments),
            masks=tf.constant(masks[:n]),
        )[contract.OUTPUT].shape == (n, 4)


def test_export_refuses_an_existing_version(model_base: Path) -> None:
    from allxai.trainer.export import ExportError, export_model
    from allxai.trainer.models import build_allnet

    model = build_allnet(4, (INPUT_SIZE, INPUT_SIZE))
    with pytest.raises(ExportError, match="exists already"):
        export_model(
            model,
            model_base,
            "allnet",
            1,
            {"input_size": [INPUT_SIZE, INPUT_SIZE]},
            np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8),
        )


def test_export_refuses_a_model_that_outputs_nan(tmp_path: Path) -> None:
    import keras

    from allxai.trainer.export import ExportError, export_model

    inputs = keras.Input((16, 16, 3))
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([np.full(w.shape, np.nan, np.float32) for w in dense.get_weights()])
    with pytest.raises(ExportError, match=r"non-finite probabilities \(NaN or infinity\)"):
        export_model(
            model, tmp_path, "diverged", 1, {"input_size": [16, 16]}, np.zeros((2, 16, 16, 3), np.uint8)
        )
    assert list((tmp_path / "diverged").iterdir()) == [], "no version, no temporary folder left"


def test_unknown_architecture() -> None:
    from allxai.trainer.models import build_model

    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'"):
        build_model("resnet9000", 2, (32, 32))


def test_warmup_records_are_prediction_logs_tf_serving_can_replay(model_base: Path) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = model_base / "allnet" / "1" / contract.WARMUP_FILE
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))
    ]
    requests = [log.predict_log.request for log in logs]
    assert {r.model_spec.name for r in requests} == {"allnet"}
    assert [r.model_spec.signature_name for r in requests] == [
        contract.SERVING_SIGNATURE,
        contract.SERVING_SIGNATURE,
        contract.COMPOSE_SIGNATURE,
    ]
    shapes = [[d.size for d in r.inputs[contract.SERVING_INPUT].tensor_shape.dim] for r in requests[:2]]
    assert shapes == [[1, INPUT_SIZE, INPUT_SIZE, 3], [8, INPUT_SIZE, INPUT_SIZE, 3]]
    # Replayed as TensorFlow Serving replays them: every record runs on its signature and answers.
    loaded = tf.saved_model.load(str(model_base / "allnet" / "1"))
    for request in requests:
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        out = loaded.signatures[request.model_spec.signature_name](**inputs)[contract.OUTPUT].numpy()
        rows = len(inputs.get(contract.SERVING_INPUT, inputs.get("masks")))
        assert out.shape[0] == rows and np.isfinite(out).all()


def test_export_a_checkpoint(tmp_path: Path) -> None:
    import tensorflow as tf

    from allxai.trainer.config import load_config
    from allxai.trainer.export import ExportError, export_checkpoint
    from allxai.trainer.models import build_allnet

    model = build_allnet(2, (32, 32))
    weights = tmp_path / "best.weights.h5"
    model.save_weights(str(weights))
    config = load_config(None, input_size=32, out=tmp_path / "models", name="ckpt", version=3)
    card = {"class_names": ["all", "hem"]}
    path = export_checkpoint(config, weights, card)
    served = tf.saved_model.load(str(path)).signatures[contract.SERVING_SIGNATURE]
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    expected = np.asarray(model(image.astype(np.float32)))
    np.testing.assert_allclose(
        served(images=tf.constant(image))[contract.OUTPUT].numpy(), expected, atol=1e-5
    )
    with pytest.raises(ExportError, match="class_names"):
        export_checkpoint(config.model_copy(update={"version": 4}), weights, None)


def test_mixed_precision_policy_follows_the_config() -> None:
    import keras

    from allxai.trainer.config import load_config
    from allxai.trainer.fit import distribution

    try:
        distribution(load_config(None, mixed_precision="on"))
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        distribution(load_config(None, mixed_precision="auto"))  # no GPU here: float32
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_evaluate_an_export_through_its_serving_signature(model_base: Path, tmp_path: Path) -> None:
    from allxai.client.cli import main as allxai_main
    from allxai.trainer.synthetic import make_dataset

    data = make_dataset(tmp_path / "data", per_class=3, size=INPUT_SIZE, seed=9)
    reports = tmp_path / "reports"
    assert (
        allxai_main(
            [
                "evaluate",
                "--model",
                str(model_base / "allnet" / "1"),
                "--data",
                str(data),
                "--reports",
                str(reports),
            ]
        )
        == 0
    )
    report = json.loads((reports / "evaluation.json").read_text())
    assert report["metrics"]["n"] == 12
    assert len(report["metrics"]["confusion_matrix"]) == 4
    assert (reports / "confusion_matrix.png").is_file()


def test_fine_tuning_unfreezes_only_the_top_of_the_backbone() -> None:
    import keras

    from allxai.trainer.models import backbone_of, build_model, set_trainable

    model = build_model("mobilenetv3large", 2, (64, 64), weights=None)
    backbone = backbone_of(model)
    set_trainable(model, 0)
    assert not backbone.trainable
    set_trainable(model, 10)
    trainable = [layer for layer in backbone.layers if layer.trainable and layer.weights]
    assert trainable, "the top layers train"
    assert all(layer in backbone.layers[-10:] for layer in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    assert backbone_of(build_model("allnet", 2, (64, 64))) is None


def _serving_only_export(path: Path, size: int, classes: int) -> None:
    """A SavedModel from elsewhere: only ``serving_default``, its own tensor names, no model card."""
    import keras
    import tensorflow as tf

    inputs = keras.Input((size, size, 3))
    model = keras.Model(
        inputs,
        keras.layers.Dense(classes, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs)),
    )
    module = tf.Module()
    module.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="pixels")])
    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": module.model(tf.cast(pixels, tf.float32))}

    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def test_evaluate_a_savedmodel_without_a_model_card(tmp_path: Path) -> None:
    from allxai.client.cli import main as allxai_main
    from allxai.trainer.synthetic import make_dataset

    _serving_only_export(tmp_path / "foreign" / "1", 24, 4)
    data = make_dataset(tmp_path / "data", per_class=2, size=24, seed=3)
    reports = tmp_path / "reports"
    argv = ["evaluate", "--model", str(tmp_path / "foreign" / "1"), "--data", str(data)]
    assert allxai_main([*argv, "--reports", str(reports)]) == 0
    report = json.loads((reports / "evaluation.json").read_text())
    assert report["metrics"]["n"] == 8
    assert report["notes"] == [
        "no model card",
        "class names from the data's class folders, in order: Benign, Early, Pre, Pro",
        "input size 24x24 from the serving signature",
    ]
    # A card given on the command line names the classes instead.
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"class_names": ["Benign", "Early", "Pre", "Pro"], "input_size": [24, 24]}))
    assert allxai_main([*argv, "--reports", str(reports), "--card", str(card)]) == 0
    assert json.loads((reports / "evaluation.json").read_text())["notes"] == [f"card from {card}"]


def test_evaluate_says_so_when_every_image_is_skipped(
    model_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from allxai.client.cli import main as allxai_main

    for name in ("Benign", "Early", "Pre", "Pro"):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "x.png").write_bytes(f"not an image: {name}".encode())
    with pytest.raises(SystemExit) as exited:
        allxai_main(
            ["evaluate", "--model", str(model_base / "allnet" / "1"), "--data", str(tmp_path / "data")]
        )
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "allxai evaluate: no usable images in" in err and "all 4 were skipped (x.png: " in err
    assert "Traceback" not in err
