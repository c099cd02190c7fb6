"""TensorFlow Serving's gRPC protocol over the real SavedModels, for the tests (no binary exists here).

It speaks ``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata) and
``tensorflow.serving.ModelService`` (GetModelStatus) with the real request and response messages
and TensorProtos, runs the real SavedModels of a ``<base>/<name>/<version>`` tree, and answers the
way TensorFlow Serving does where the gateway depends on it: NOT_FOUND for unknown models, versions
and labels; INVALID_ARGUMENT for unknown signatures, wrong inputs, an ``output_filter`` naming no
output of the signature, and batches over ``max_batch_size``; the resolved version in every
response's ``model_spec``. Models with only ``serving_default`` (any tensor names) are served as-is.

Knobs for the failure tests: ``delay`` (seconds before each Predict: a slow model server) and a
request counter (to see per-request balancing). ``python -m tests.support.tfserving_fake --base B --port P``
runs it as its own process, so a test can kill it with SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc


class FakeTFServing:
    """Every version of every model under ``base``, served over TensorFlow Serving's gRPC API."""

    def __init__(
        self,
        base: Path,
        labels: dict[str, dict[str, int]] | None = None,
        delay: float = 0.0,
        max_batch_size: int | None = None,
    ) -> None:
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        self.labels = labels or {}
        self.delay = delay
        self.max_batch_size = max_batch_size
        self.requests: collections.Counter[str] = collections.Counter()
        #: The client address (``context.peer()``) of each Predict, in order: which connection it came on.
        self.peers: list[str] = []
        self.models: dict[str, dict[int, tuple[Any, Any]]] = {}
        for model_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for version_dir in sorted(p for p in model_dir.iterdir() if p.name.isdigit()):
                loaded = tf.saved_model.load(str(version_dir))
                proto = saved_model_pb2.SavedModel()
                proto.ParseFromString((version_dir / "saved_model.pb").read_bytes())
                signature_defs = proto.meta_graphs[0].signature_def
                self.models.setdefault(model_dir.name, {})[int(version_dir.name)] = (loaded, signature_defs)
        self.server: grpc.aio.Server | None = None

    # --- lookup, as TensorFlow Serving resolves a ModelSpec ------------------------------------

    async def _find(self, spec: Any, context: Any) -> tuple[int, Any, Any]:
        versions = self.models.get(spec.name)
        if versions is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})"
            )
        assert versions is not None
        if spec.HasField("version"):
            version = spec.version.value
        elif spec.version_label:
            label = self.labels.get(spec.name, {}).get(spec.version_label)
            if label is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Unrecognized servable version label: {spec.version_label}",
                )
            assert label is not None
            version = label
        else:
            version = max(versions)
        if version not in versions:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({spec.name}, {version})"
            )
        loaded, signature_defs = versions[version]
        return version, loaded, signature_defs

    # --- PredictionService -----------------------------------------------------------------------

    async def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        self.requests["Predict"] += 1
        self.peers.append(context.peer())
        version, loaded, signature_defs = await self._find(request.model_spec, context)
        name = request.model_spec.signature_name or "serving_default"
        if name not in signature_defs:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f'Serving signature key "{name}" not found.'
            )
        expected = set(signature_defs[name].inputs.keys())
        if set(request.inputs.keys()) != expected:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input keys {sorted(request.inputs.keys())} do not match the signature's {sorted(expected)}",
            )
        known = sorted(signature_defs[name].outputs.keys())
        for alias in request.output_filter:
            if alias not in known:  # TensorFlow Serving's own check and words (predict_util.cc)
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} "
                    f"Outputs expected to be in the set {{{','.join(known)}}}.",
                )
        inputs = {key: tf.make_ndarray(value) for key, value in request.inputs.items()}
        if name == "serving_default" and self.max_batch_size is not None:
            size = len(next(iter(inputs.values())))
            if size > self.max_batch_size:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Task size {size} is larger than maximum input batch size {self.max_batch_size}",
                )
        if self.delay:
            await asyncio.sleep(self.delay)
        function = loaded.signatures[name]
        try:
            outputs = await asyncio.to_thread(
                lambda: function(**{k: tf.constant(v) for k, v in inputs.items()})
            )
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc).splitlines()[0])
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = name
        wanted = set(request.output_filter) or set(outputs)
        for key, value in outputs.items():
            if key in wanted:
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response

    async def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        from tensorflow_serving.apis import get_model_metadata_pb2

        self.requests["GetModelMetadata"] += 1
        if list(request.metadata_field) != ["signature_def"]:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "Metadata field signature_def is the only one supported"
            )
        version, _, signature_defs = await self._find(request.model_spec, context)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(signature_map)
        return response

    # --- ModelService ----------------------------------------------------------------------------

    async def GetModelStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        from tensorflow_serving.apis import get_model_status_pb2

        self.requests["GetModelStatus"] += 1
        versions = self.models.get(request.model_spec.name)
        if versions is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {request.model_spec.name}"
            )
        assert versions is not None
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(versions):
            status = response.model_version_status.add()
            status.version = version
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response

    # --- life cycle ------------------------------------------------------------------------------

    async def start(
        self, port: int = 0, host: str = "127.0.0.1", credentials: grpc.ServerCredentials | None = None
    ) -> int:
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        fake = self

        class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
            Predict = staticmethod(fake.Predict)
            GetModelMetadata = staticmethod(fake.GetModelMetadata)

        class Models(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
            GetModelStatus = staticmethod(fake.GetModelStatus)

        limit = 256 * 1024 * 1024
        self.server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Prediction(), self.server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), self.server)
        address = f"{host}:{port}"
        if credentials is None:
            bound = self.server.add_insecure_port(address)
        else:
            bound = self.server.add_secure_port(address, credentials)
        await self.server.start()
        return bound

    async def stop(self, grace: float | None = 0) -> None:
        if self.server is not None:
            await self.server.stop(grace)


async def _main(args: argparse.Namespace) -> None:
    labels = {args.model: {"stable": 1}} if args.model else None
    fake = FakeTFServing(args.base, labels=labels, delay=args.delay, max_batch_size=args.max_batch_size)
    port = await fake.start(args.port)
    print(f"READY {port}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    # SIGUSR1 makes it slow (2 s per Predict), so a test can show deadlines are honoured; "SLOW" on
    # stdout tells the test it is, so the test waits for that line rather than for a guessed time.

    def slow() -> None:
        fake.delay = 2.0
        print("SLOW", flush=True)

    loop.add_signal_handler(signal.SIGUSR1, slow)
    await stopping.wait()
    await fake.stop(1)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--model", default="", help="give this model a 'stable' label on version 1")
    asyncio.run(_main(parser.parse_args()))
    sys.exit(0)
