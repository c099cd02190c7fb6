"""The thin client: no TensorFlow on import, and the CLI's output."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from allxai.client import AllxaiClientError, AsyncClient, Client, service_config
from allxai.client._channel import Security
from allxai.client._specimen import SpecimenBatches
from allxai.client.cli import main
from allxai.v1 import diagnosis_pb2 as pb
from tests.conftest import RunningGateway
from tests.support.client import SERVER_NAME, Pki, free_port, gateway_server, make_pki, servicer_server

#: Top-level third-party modules the thin client may bring in. grpc itself imports its Cython runtime
#: (``cython_runtime``, ``_cython_<version>``), typing_extensions, and, when they are installed, its companion
#: packages grpc_tools, grpc_health and grpc_reflection (grpc/__init__.py aliases them as grpc.tools, ...);
#: protobuf is ``google``. numpy is allowed, the SDK's third dependency, though nothing imports it today.
SDK_MODULES = frozenset(
    {"allxai", "google", "grpc", "grpc_tools", "grpc_health", "grpc_reflection", "cython_runtime"}
    | {"numpy", "typing_extensions"}
)


@pytest.mark.parametrize(
    ("modules", "allowed"),
    [
        ("allxai.client, allxai.client.aio", SDK_MODULES),
        ("allxai.client.cli", SDK_MODULES | {"tqdm"}),
        ("allxai.loadtest.tester", SDK_MODULES | {"tqdm"}),
    ],
)
def test_importing_the_clients_brings_in_only_allowed_third_party_modules(
    modules: str, allowed: frozenset[str]
) -> None:
    """An allow-list, not a block-list: no TensorFlow, Pillow, lime or anything new sneaks in."""
    code = (
        "import sys; before = set(sys.modules); "
        f"import {modules}; "
        "new = {n.split('.')[0] for n in set(sys.modules) - before}; "
        "print(sorted(n for n in new - set(sys.stdlib_module_names) if not n.startswith('_cython_')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    imported = set(json.loads(result.stdout.replace("'", '"')))
    assert imported <= allowed, f"{modules} imports {sorted(imported - allowed)}"
    assert {"allxai", "grpc", "google"} <= imported


def test_sdk_classify_and_explain(gateway: RunningGateway, cell_png: bytes) -> None:
    with Client(gateway.target, timeout=60) as client:
        result = client.classify(cell_png, image_id="x")
        assert result.model == "allnet" and result.image_id == "x"
        assert set(result.scores) == {"Benign", "Early", "Pre", "Pro"}
        seen: list[int] = []
        explained = client.explain(
            cell_png,
            num_samples=100,
            seed=4,
            pictures=["overlay", "figure"],
            progress=lambda done, total: seen.append(done),
        )
        assert explained.seed == 4 and set(explained.pictures) == {"overlay", "figure"}
        assert seen and seen[-1] == 100
        with pytest.raises(AllxaiClientError, match=r"INVALID_ARGUMENT: image\.data"):
            client.classify(b"nope")


def test_cli_classify_lines_and_json(
    gateway: RunningGateway, cell_png: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "cell.png"
    image.write_bytes(cell_png)
    assert main(["classify", "--target", gateway.target, str(image)]) == 0
    line = capsys.readouterr().out.strip()
    # One line such as "Pro-B ALL 97.3%": the model card's display name and the confidence, then what the
    # domain check says ("— no domain check (the model has none)" for a model without one).
    assert re.search(r" \d+\.\d%( — .+)?$", line), line
    assert any(
        line.startswith(n) for n in ("Benign (hematogones)", "Early pre-B ALL", "Pre-B ALL", "Pro-B ALL")
    )

    assert main(["classify", "--json", "--target", gateway.target, str(image)]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["path"] == str(image) and record["image_id"] == "cell.png"


def test_cli_explain_writes_pictures(gateway: RunningGateway, cell_png: bytes, tmp_path: Path) -> None:
    image = tmp_path / "cell.png"
    image.write_bytes(cell_png)
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                "--target",
                gateway.target,
                str(image),
                "--out",
                str(out),
                "--samples",
                "100",
                "--seed",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "cell_figure.png",
        "cell_heatmap.png",
        "cell_mask.png",
        "cell_overlay.png",
    ]


def test_cli_reports_a_bad_file(
    gateway: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    assert main(["classify", "--target", gateway.target, str(bad), str(tmp_path / "missing.png")]) == 1
    err = capsys.readouterr().err
    assert "bad.png: error: INVALID_ARGUMENT" in err
    assert "missing.png: error:" in err


# --- the asyncio client -----------------------------------------------------------------------------


async def test_async_client_has_the_same_methods_and_results(
    gateway: RunningGateway, cell_png: bytes, model_base: Path
) -> None:
    async with AsyncClient(gateway.target, timeout=60) as client:
        info = await client.model_info()
        assert info.name == "allnet" and info.class_names == ["Benign", "Early", "Pre", "Pro"]
        assert info.available_versions == [1]
        result = await client.classify(cell_png, image_id="a")
        assert result.image_id == "a" and set(result.scores) == set(info.class_names)
        specimen = await client.classify_specimen([cell_png, cell_png, cell_png], specimen_id="S1")
        assert [c.label for c in specimen.cells] == [result.label] * 3
        assert specimen.counts[result.label] == 3 and sorted(specimen.review_first) == [0, 1, 2]
        seen: list[tuple[int, int]] = []
        explained = await client.explain(
            cell_png, num_samples=100, seed=3, pictures=["mask"], progress=lambda d, t: seen.append((d, t))
        )
        assert explained.seed == 3 and set(explained.pictures) == {"mask"}
        assert seen[-1] == (100, 100) and explained.classification.label == result.label
        with pytest.raises(AllxaiClientError, match=r"INVALID_ARGUMENT: image\.data"):
            await client.classify(b"nope")
    # The same call through the sync client gives the same typed result.
    with Client(gateway.target) as sync:
        assert sync.classify(cell_png, image_id="a").scores == result.scores


def test_a_large_specimen_goes_in_batches_and_joins_into_one_summary(
    gateway: RunningGateway, cell_png: bytes
) -> None:
    from tests.conftest import INPUT_SIZE, png_bytes

    rng = np.random.default_rng(0)
    images = [cell_png] + [
        png_bytes(rng.integers(0, 255, (INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)) for _ in range(6)
    ]
    ids = [f"c{i}" for i in range(len(images))]
    with Client(gateway.target) as whole, Client(gateway.target, specimen_batch_size=3) as batched:
        one = whole.classify_specimen(images, "S", ids)
        three = batched.classify_specimen(images, "S", ids)
        assert [c.image_id for c in three.cells] == ids
        assert {c.request_id for c in three.cells}.__len__() == 3  # three calls
        # A model's float32 scores differ in the 7th or 8th digit with what they are batched with:
        # the same cells, the same classes, scores equal to a tolerance.
        for a, b in zip(three.cells, one.cells, strict=True):
            assert list(a.scores) == list(b.scores)
            assert list(a.scores.values()) == pytest.approx(list(b.scores.values()), abs=1e-5)
        assert three.counts == one.counts and three.blast_fraction == pytest.approx(one.blast_fraction)
        # The review order is by confidence, where near-equal cells may swap: the same cells, and the
        # joined order the gateway's (outside the domain first, then least confident).
        assert sorted(three.review_first) == sorted(one.review_first)
        keys = [
            (three.cells[i].in_domain is not False, three.cells[i].confidence) for i in three.review_first
        ]
        assert keys == sorted(keys)
        # The gateway names a bad image by its index in its call; the SDK by its index in the specimen.
        with pytest.raises(AllxaiClientError, match=r"INVALID_ARGUMENT: images\[4\]\.data") as caught:
            batched.classify_specimen([*images[:4], b"junk", images[5]])
        assert caught.value.image_index == 4


# --- retries, deadlines and waiting, through the service config -----------------------------------


def test_specimen_batches_read_images_only_as_each_batch_is_sent() -> None:
    read: list[int] = []

    def images() -> Iterator[bytes]:
        for i in range(7):
            read.append(i)
            yield bytes([i]) * 10

    batches = SpecimenBatches(images(), pb.ModelSpec(), "S", batch_size=3, max_bytes=1000)
    assert read == []  # nothing read before the first request is asked for
    sizes = []
    for request in batches:
        # The batch in flight and the image that opens the next: never the whole specimen.
        assert len(read) <= batches.offset + len(request.images) + 1
        sizes.append(len(request.images))
        batches.add(pb.ClassifySpecimenResponse(model=pb.ModelRef(name="m", version=1)))
    assert sizes == [3, 3, 1] and read == list(range(7))
    # By bytes too: 10-byte images, at most 25 bytes a batch.
    small = SpecimenBatches([b"x" * 10] * 5, pb.ModelSpec(), "", batch_size=100, max_bytes=25)
    assert [len(r.images) for r in small] == [2, 2, 1]
    # An empty specimen is still one (empty) call, for the gateway to refuse.
    assert [len(r.images) for r in SpecimenBatches([], pb.ModelSpec(), "", 3, 100)] == [0]


@pytest.mark.parametrize(("initial", "maximum"), [(0, 5.0), (0.2, 0), (-1, 5.0)])
def test_backoffs_must_be_positive(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Client("127.0.0.1:1", initial_backoff=initial, max_backoff=maximum)


def test_security_settings_are_checked_and_turned_into_grpc_the_same_way_everywhere(tmp_path: Path) -> None:
    assert Security().credentials() is None and Security().metadata() == ()
    plain = Security(token=" t0ken ", allow_plaintext_token=True)
    plain.check()
    assert plain.metadata() == (("authorization", "Bearer t0ken"),) and plain.credentials() is None
    with pytest.raises(ValueError, match="clear text"):
        Security(token="t0ken").check()
    with pytest.raises(ValueError, match="needs its key"):
        Security(certificate_chain=b"pem").check()
    tls = Security(root_certificates=tmp_path / "missing.pem", token="t0ken", server_name="gw")
    tls.check()  # a token over TLS goes as call credentials, not as plain metadata
    assert tls.uses_tls and tls.metadata() == ()
    assert tls.channel_options() == [("grpc.ssl_target_name_override", "gw")]
    with pytest.raises(FileNotFoundError, match=r"missing\.pem"):
        tls.credentials()  # the CA file is read when the channel is made


def test_the_service_config_sets_retries_on_unavailable_only() -> None:
    config = json.loads(service_config(3, initial_backoff=0.1, wait_for_ready=True))
    [method] = config["methodConfig"]
    assert method["name"] == [{"service": "allxai.v1.DiagnosisService"}] and method["waitForReady"] is True
    assert method["retryPolicy"] == {
        "maxAttempts": 4,
        "initialBackoff": "0.100s",
        "maxBackoff": "5.000s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    assert "retryPolicy" not in json.loads(service_config(0))["methodConfig"][0]
    with pytest.raises(ValueError, match="retries"):
        service_config(5)


class _FlakyServicer:
    """The real servicer, but GetModelInfo answers UNAVAILABLE the first ``failures`` times."""

    def __new__(cls, diagnosis: object, failures: int) -> object:
        from allxai.server.servicer import DiagnosisServicer

        class Flaky(DiagnosisServicer):
            calls = 0

            async def GetModelInfo(self, request: Any, context: Any) -> Any:  # noqa: N802
                Flaky.calls += 1
                if Flaky.calls <= failures:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
                return await super().GetModelInfo(request, context)

        return Flaky(diagnosis)  # type: ignore[arg-type]


def test_unavailable_is_retried_with_backoff(gateway: RunningGateway) -> None:
    with (
        servicer_server(gateway, lambda d: _FlakyServicer(d, failures=2)) as target,
        Client(target, retries=2, initial_backoff=0.05) as client,
    ):
        assert client.model_info().name == "allnet"
    with (
        servicer_server(gateway, lambda d: _FlakyServicer(d, failures=1)) as target,
        Client(target, retries=0) as client,
        pytest.raises(AllxaiClientError, match="UNAVAILABLE: warming"),
    ):
        client.model_info()


def test_waiting_for_a_gateway_that_is_not_up_yet(gateway: RunningGateway, cell_png: bytes) -> None:
    port = free_port()
    # Without waiting, a gateway that is not there fails fast, after the retries.
    started = time.monotonic()
    with (
        Client(f"127.0.0.1:{port}", retries=1, initial_backoff=0.05) as client,
        pytest.raises(AllxaiClientError, match="UNAVAILABLE"),
    ):
        client.classify(cell_png)
    assert time.monotonic() - started < 5
    # Waiting, the call goes out once the gateway listens, within its deadline.
    with (
        Client(f"127.0.0.1:{port}", timeout=20, wait_for_ready=True) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        pending = pool.submit(client.classify, cell_png)
        time.sleep(0.3)
        assert not pending.done()
        with gateway_server(gateway, port=port):
            assert pending.result(timeout=20).model == "allnet"
    # And the deadline still holds while it waits.
    started = time.monotonic()
    with (
        Client(f"127.0.0.1:{free_port()}", timeout=0.5, wait_for_ready=True) as client,
        pytest.raises(AllxaiClientError, match="DEADLINE_EXCEEDED"),
    ):
        client.model_info()
    # Not before the deadline, and long before the default one (60 s): a busy machine adds seconds.
    assert 0.4 < time.monotonic() - started < 30


# --- TLS, mTLS and bearer tokens against the gateway's own TLS and authorisation ------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_with_a_private_ca_and_a_server_name(gateway: RunningGateway, pki: Pki, cell_png: bytes) -> None:
    with gateway_server(gateway, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key) as target:
        # The certificate names 127.0.0.1 as well, so either name checks out.
        with Client(target, root_certificates=pki.ca) as client:
            assert client.classify(cell_png).model == "allnet"
        port = target.rsplit(":", 1)[1]
        with Client(f"localhost:{port}", root_certificates=pki.ca.read_bytes(), server_name=SERVER_NAME) as c:
            assert c.model_info().name == "allnet"
        with (
            Client(target, root_certificates=pki.other_ca, retries=0) as client,
            pytest.raises(AllxaiClientError, match="UNAVAILABLE"),
        ):
            client.model_info()
        with Client(target, retries=0) as plaintext, pytest.raises(AllxaiClientError, match="UNAVAILABLE"):
            plaintext.model_info()


async def test_mtls_client_certificate(gateway: RunningGateway, pki: Pki, cell_png: bytes) -> None:
    settings = {
        "tls_cert_file": pki.server_cert,
        "tls_key_file": pki.server_key,
        "tls_client_ca_file": pki.ca,
        "auth_mode": "client_cert",
        "auth_allowed_client_names": ["lis-client"],
    }
    with gateway_server(gateway, **settings) as target:
        mtls = {
            "root_certificates": pki.ca,
            "certificate_chain": pki.client_cert,
            "private_key": pki.client_key,
        }
        async with AsyncClient(target, **mtls) as client:
            assert (await client.classify(cell_png)).model == "allnet"
        async with AsyncClient(target, root_certificates=pki.ca, retries=0) as anonymous:
            with pytest.raises(AllxaiClientError, match="UNAVAILABLE"):
                await anonymous.model_info()
    with pytest.raises(ValueError, match="needs its key"):
        Client("127.0.0.1:1", root_certificates=pki.ca, certificate_chain=pki.client_cert)


async def test_bearer_token_over_tls_and_explicitly_over_plaintext(
    gateway: RunningGateway, pki: Pki, cell_png: bytes
) -> None:
    tls = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    with gateway_server(gateway, auth_mode="token", auth_tokens="s3cret", **tls) as target:
        async with AsyncClient(target, root_certificates=pki.ca, token="s3cret") as client:
            assert (await client.classify(cell_png)).model == "allnet"
        with (
            Client(target, root_certificates=pki.ca, token="wrong") as client,
            pytest.raises(AllxaiClientError, match="UNAUTHENTICATED: the bearer token is not accepted"),
        ):
            client.model_info()
        with Client(target, root_certificates=pki.ca) as client, pytest.raises(AllxaiClientError) as caught:
            client.model_info()
        assert caught.value.code == "UNAUTHENTICATED"
    with pytest.raises(ValueError, match="clear text"):
        Client("127.0.0.1:1", token="s3cret")
    plaintext = {"auth_allow_plaintext_tokens": True}
    with gateway_server(gateway, auth_mode="token", auth_tokens="s3cret", **plaintext) as target:
        async with AsyncClient(target, token="s3cret", allow_plaintext_token=True) as client:
            assert (await client.model_info()).name == "allnet"
