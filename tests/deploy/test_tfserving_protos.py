"""The gateway for TensorFlow Serving without TensorFlow: allxai.tfs_protos against tensorflow-serving-api,
the numpy tensor conversion against TensorFlow's, the gateway running with TensorFlow unimportable, and
the image that installs it (deploy/docker/gateway-tfserving.Dockerfile).

Code that must not see TensorFlow runs in a subprocess whose import system refuses ``tensorflow``,
``tensorflow_serving`` and ``keras``; this process has them, and compares.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO

GENERATED = REPO / "proto" / "allxai" / "tfs_protos"
DOCKERFILE = REPO / "deploy" / "docker" / "gateway-tfserving.Dockerfile"
TENSORFLOW = ("tensorflow", "tensorflow_serving", "keras")

#: Prepended to every subprocess here: TensorFlow cannot be imported, as in the image without it.
NO_TENSORFLOW = f"""
import importlib.abc, sys
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TENSORFLOW!r}:
            raise ImportError(f"{{name}} is not installed in the gateway-tfserving image")
        return None
sys.meta_path.insert(0, _Refuse())
"""


def run_without_tensorflow(code: str, timeout: float = 120) -> str:
    """Run ``code`` with TensorFlow unimportable; its stdout. It must also end with none of it loaded."""
    check = f"\nassert not [m for m in sys.modules if m.split('.')[0] in {TENSORFLOW!r}]\n"
    result = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW + code + check],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_blocker_really_refuses_tensorflow() -> None:
    # Keeps the tests below honest: in these subprocesses, importing TensorFlow fails.
    out = run_without_tensorflow(
        "try:\n    import tensorflow\nexcept ImportError as e:\n    print('refused:', e)\n"
    )
    assert "refused: tensorflow is not installed" in out


# --- the generated messages ----------------------------------------------------------------------------


def generated_modules() -> list[str]:
    return sorted(
        "allxai.tfs_protos." + str(p.relative_to(GENERATED).with_suffix("")).replace("/", ".")
        for p in GENERATED.rglob("*_pb2.py")
    )


def test_every_descriptor_is_tensorflow_servings_own() -> None:
    import importlib

    from google.protobuf import descriptor_pool

    modules = generated_modules()
    assert len(modules) == 38
    code = f"""
import hashlib, importlib, json
out = {{}}
for name in {modules!r}:
    d = importlib.import_module(name).DESCRIPTOR
    out[d.name] = hashlib.sha256(d.serialized_pb).hexdigest()
print(json.dumps(out))
"""
    ours = json.loads(run_without_tensorflow(code))
    # TensorFlow's own modules for the same files (some live elsewhere in its tree, e.g. xla's): the root
    # services' modules register every file they import in the default pool.
    for name in ("prediction_service_pb2", "model_service_pb2"):
        importlib.import_module(f"tensorflow_serving.apis.{name}")
    pool = descriptor_pool.Default()
    theirs = {name: hashlib.sha256(pool.FindFileByName(name).serialized_pb).hexdigest() for name in ours}
    assert ours == theirs
    assert (
        "tensorflow_serving/apis/predict.proto" in ours and "tensorflow/core/framework/tensor.proto" in ours
    )


#: Built in both processes, field by field, with each side's own messages and tensor conversion.
BUILD = """
import numpy as np
def build(predict_pb2, tensor):
    request = predict_pb2.PredictRequest(output_filter=["scores"])
    request.model_spec.name = "allnet"
    request.model_spec.version.value = 2
    request.model_spec.signature_name = "serving_default"
    image = np.arange(2 * 5 * 5 * 3, dtype=np.uint8).reshape(2, 5, 5, 3)
    request.inputs["image"].CopyFrom(tensor(image))
    request.inputs["masks"].CopyFrom(tensor(np.eye(3, 4, dtype=np.uint8)))
    request.inputs["note"].CopyFrom(tensor(np.array([b"a", b"\\xff\\x00"])))
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "allnet"
    response.model_spec.version.value = 2
    response.outputs["scores"].CopyFrom(tensor(np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32)))
    response.outputs["card"].CopyFrom(tensor(np.array([b'{"classes": ["hem", "all"]}'])))
    response.outputs["one"].CopyFrom(tensor(np.float32(0.5)))
    return request, response
"""


def test_predict_messages_are_wire_identical_both_ways(tmp_path: Path) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    namespace: dict[str, Any] = {}
    exec(BUILD, namespace)
    request, response = namespace["build"](predict_pb2, tf.make_tensor_proto)
    (tmp_path / "theirs.request").write_bytes(request.SerializeToString(deterministic=True))
    (tmp_path / "theirs.response").write_bytes(response.SerializeToString(deterministic=True))
    code = (
        BUILD
        + f"""
from pathlib import Path
from allxai.server.backends import tfserving_tensors
from allxai.tfs_protos.tensorflow_serving.apis import predict_pb2
request, response = build(predict_pb2, tfserving_tensors.to_tensor_proto)
folder = Path({str(tmp_path)!r})
(folder / "ours.request").write_bytes(request.SerializeToString(deterministic=True))
(folder / "ours.response").write_bytes(response.SerializeToString(deterministic=True))
# TensorFlow Serving's bytes, parsed with ours: the same messages, and the same arrays out of them.
theirs_request = predict_pb2.PredictRequest.FromString((folder / "theirs.request").read_bytes())
theirs_response = predict_pb2.PredictResponse.FromString((folder / "theirs.response").read_bytes())
assert theirs_request == request and theirs_response == response
scores = tfserving_tensors.to_array(theirs_response.outputs["scores"])
assert scores.dtype == np.float32 and scores.tolist() == [[0.25, 0.75], [1.0, 0.0]]
card = tfserving_tensors.to_array(theirs_response.outputs["card"])
assert card.tolist() == [b'{{"classes": ["hem", "all"]}}']
assert tfserving_tensors.to_array(theirs_response.outputs["one"]).tolist() == 0.5
print("parsed", len(theirs_request.inputs), len(theirs_response.outputs))
"""
    )
    assert run_without_tensorflow(code).split() == ["parsed", "3", "3"]
    for kind, message in (("request", request), ("response", response)):
        ours = (tmp_path / f"ours.{kind}").read_bytes()
        assert ours == (tmp_path / f"theirs.{kind}").read_bytes(), kind
        assert type(message).FromString(ours) == message


def test_regenerating_gives_the_committed_files(tmp_path: Path) -> None:
    out = tmp_path / "tfs_protos"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "tfs_protos.py"), "--out", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    ours = {
        p.relative_to(GENERATED) for p in GENERATED.rglob("*") if p.is_file() and "__pycache__" not in str(p)
    }
    fresh = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert ours - fresh == {Path("README.md"), Path("ruff.toml")}
    assert fresh <= ours
    _, mismatch, errors = filecmp.cmpfiles(GENERATED, out, [str(p) for p in fresh], shallow=False)
    assert not mismatch and not errors, mismatch + errors


def test_pyproject_lists_every_generated_package() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = {p for p in setuptools["packages"] if p.startswith("allxai.tfs_protos")}
    folders = {
        "allxai.tfs_protos" + "".join(f".{part}" for part in p.parent.relative_to(GENERATED).parts)
        for p in GENERATED.rglob("__init__.py")
    }
    assert listed == folders
    assert setuptools["package-dir"]["allxai.tfs_protos"] == "proto/allxai/tfs_protos"


# --- numpy tensors against TensorFlow's ------------------------------------------------------------------

DTYPES: list[type[Any]] = [
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
]
DTYPES += [np.uint32, np.uint64, np.bool_]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(2, 3, 4), (1,), (), (0, 3)], ids=str)
def test_tensors_encode_and_decode_as_tensorflow_does(dtype: type, shape: tuple[int, ...]) -> None:
    import tensorflow as tf

    from allxai.server.backends import tfserving_tensors

    value: np.ndarray[Any, Any] = np.random.default_rng(0).integers(0, 100, shape).astype(dtype)
    theirs = tf.make_tensor_proto(value)
    ours = tfserving_tensors.to_tensor_proto(value)
    assert ours.SerializeToString() == theirs.SerializeToString()
    decoded, expected = tfserving_tensors.to_array(theirs), tf.make_ndarray(theirs)
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    assert np.array_equal(decoded, expected)


def test_strings_and_short_value_lists_decode_as_tensorflow_does() -> None:
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    from allxai.server.backends import tfserving_tensors

    for value in (np.array([b"ab", b"c"]), np.array(["x", "yz"]), np.array(b"one")):
        assert tfserving_tensors.to_tensor_proto(value) == tf.make_tensor_proto(value)
    # TensorFlow Serving may send a constant as one value for a larger shape: the last value repeats.
    for dtype, field, values in (
        (1, "float_val", [1.0, 2.0]),
        (19, "half_val", [15360]),
        (7, "string_val", [b"a"]),
    ):
        proto = tensor_pb2.TensorProto(dtype=dtype, **{field: values})
        proto.tensor_shape.dim.add(size=3)
        expected = tf.make_ndarray(proto)
        decoded = tfserving_tensors.to_array(proto)
        assert decoded.dtype == expected.dtype and decoded.tolist() == expected.tolist()


def test_dtype_names_are_tensorflows() -> None:
    import tensorflow as tf

    from allxai.server.backends import tfserving_tensors
    from allxai.tfs_protos.tensorflow.core.framework import types_pb2

    named = 0
    for value in types_pb2.DataType.values():
        try:
            expected = tf.dtypes.as_dtype(value).name
        except TypeError:
            expected = None
        assert tfserving_tensors.dtype_name(value) == expected, types_pb2.DataType.Name(value)
        named += expected is not None
    assert named > 40  # every dtype and its _ref twin
    assert tfserving_tensors.dtype_name(12345) is None


def test_a_big_endian_array_goes_on_the_wire_little_endian() -> None:
    from allxai.server.backends import tfserving_tensors

    proto = tfserving_tensors.to_tensor_proto(np.array([1.5, 2.0], dtype=">f4"))
    assert proto.tensor_content == np.array([1.5, 2.0], dtype="<f4").tobytes()
    assert tfserving_tensors.to_array(proto).tolist() == [1.5, 2.0]


# --- the gateway with TensorFlow unimportable ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_importing_the_gateway_and_its_tfserving_backend_loads_no_tensorflow() -> None:
    out = run_without_tensorflow(
        "import allxai.server.app, allxai.server.backends.tfserving\n"
        "from allxai.server.app import make_backend\n"
        "from allxai.server.settings import Settings\n"
        "backend = make_backend(Settings(backend='tfserving', tfserving_target='127.0.0.1:1',"
        " tfserving_models=['allnet']))\n"
        "print(type(backend).__name__)\n"
    )
    assert out.strip().endswith("TFServingBackend")


def test_the_gateway_serves_through_tensorflow_serving_without_tensorflow(
    model_base: Path, cell_png: bytes, tmp_path: Path
) -> None:
    """``python -m allxai.server`` (the image's entrypoint) with TensorFlow refused, against a partner that
    speaks TensorFlow Serving's protocol with tensorflow-serving-api's own messages, in another process."""
    import grpc

    from allxai.v1 import diagnosis_pb2 as pb
    from allxai.v1 import diagnosis_pb2_grpc as pb_grpc

    tfs_port, port, health_port = free_port(), free_port(), free_port()
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.tfserving_fake",
            "--base",
            str(model_base),
            "--port",
            str(tfs_port),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    # The entrypoint runs with TensorFlow refused, and reports what it had loaded when it stops.
    loaded = tmp_path / "loaded.json"
    (tmp_path / "sitecustomize.py").write_text(
        NO_TENSORFLOW
        + "import atexit, json\n"
        + f"atexit.register(lambda: open({str(loaded)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ALLXAI_")},
        "PYTHONPATH": str(tmp_path),
        "ALLXAI_BACKEND": "tfserving",
        "ALLXAI_TFSERVING_TARGET": f"127.0.0.1:{tfs_port}",
        "ALLXAI_TFSERVING_MODELS": '["allnet"]',
        "ALLXAI_HOST": "127.0.0.1",
        "ALLXAI_PORT": str(port),
        "ALLXAI_HEALTH_PORT": str(health_port),
        "ALLXAI_METRICS_PORT": "0",
        "ALLXAI_GRACE_PERIOD_SECONDS": "1",
    }
    gateway = None
    try:
        assert fake.stdout is not None and fake.stdout.readline().startswith("READY")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "allxai.server"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = pb_grpc.DiagnosisServiceStub(channel)
            deadline = time.monotonic() + 60
            while True:
                try:
                    reply = stub.Classify(pb.ClassifyRequest(image=pb.Image(data=cell_png)), timeout=10)
                    break
                except grpc.RpcError as exc:
                    # UNAVAILABLE until the backend has read the model from the partner.
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        assert reply.model.name == "allnet" and reply.model.version == 1
        # The model card's four classes, read by the gateway over TensorFlow Serving's protocol.
        scores = reply.classification.scores
        assert [s.label for s in scores] == ["Benign", "Early", "Pre", "Pro"]
        assert abs(sum(s.score for s in scores) - 1) < 1e-4
        gateway.send_signal(signal.SIGTERM)
        _, stderr = gateway.communicate(timeout=60)
        assert gateway.returncode == 0, stderr
    finally:
        for process in (gateway, fake):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        for stream in (fake.stdout, gateway.stderr if gateway is not None else None):
            if stream is not None:
                stream.close()
    modules = json.loads(loaded.read_text())
    assert "allxai.server.backends.tfserving" in modules
    assert "allxai.tfs_protos.tensorflow_serving.apis.predict_pb2" in modules
    assert not [m for m in modules if m.split(".")[0] in TENSORFLOW]


# --- the image ---------------------------------------------------------------------------------------------


def dockerfile_requirements() -> list[str]:
    """What the Dockerfile's own requirement script prints, run here against pyproject.toml."""
    (script,) = re.findall(r"<<'PY'\n(.*?)\nPY\n", DOCKERFILE.read_text(), re.S)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout.split()


def test_the_tfserving_gateway_image_installs_the_server_extra_without_tensorflow() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["server"]
    requirements = dockerfile_requirements()
    dropped = [r for r in wanted if r not in requirements]
    assert [re.match(r"[\w.-]+", r).group(0) for r in dropped] == ["tensorflow", "tensorflow-serving-api"]  # type: ignore[union-attr]
    assert "lime==0.2.0.1" in requirements and "grpcio-health-checking>=1.85.1" in requirements
    text = DOCKERFILE.read_text()
    assert "pip install --no-deps ." in text and 'pip install ".[server]"' not in text
    # The same base, user and entrypoint as the full gateway image, and the backend fixed to tfserving.
    full = (REPO / "deploy" / "docker" / "gateway.Dockerfile").read_text()
    for pattern in (r"^FROM .*$", r"^USER .*$", r"^ENTRYPOINT .*$", r"^EXPOSE .*$"):
        assert re.findall(pattern, text, re.M) == re.findall(pattern, full, re.M), pattern
    assert re.search(r"^\s+ALLXAI_BACKEND=tfserving$", text, re.M)
    ignored = set((REPO / ".dockerignore").read_text().split())
    for line in re.findall(r"^COPY (?!--from)(.*)$", text, re.M):
        for source in line.split()[:-1]:
            assert (REPO / source).exists() and source not in ignored, source
