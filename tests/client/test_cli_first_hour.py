"""What a newcomer meets first: --version, a readable info, --version-label, TLS named as TLS, a safe bind."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from allxai.client.cli import installed_version, main
from allxai.server.security import bind_host
from allxai.server.settings import Settings
from tests.conftest import GatewayThread, RunningGateway, gateway_settings
from tests.support.client import SERVER_NAME, gateway_server, make_pki


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"allxai {installed_version()}"
    assert installed_version() != "unknown"  # the tests run on an installed allxai


def test_info_is_a_summary_and_json_on_request(
    gateway: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", "--target", gateway.target]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("model allnet version 1 (versions served: 1)")
    assert "classes:" in lines and any(line.startswith("  Benign") for line in lines)
    assert any(line.startswith("accuracy: ") for line in lines)
    assert any(line.startswith("domain check: ") for line in lines)
    assert any(line.startswith("prediction sets: ") for line in lines)
    assert len(lines) < 20 and "{" not in text  # a summary, not the card
    assert main(["info", "--target", gateway.target, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["name"] == "allnet" and isinstance(document["card"], dict)


def test_version_label_follows_a_labelled_version(
    model_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    thread = GatewayThread(gateway_settings(model_base, version_labels={"allnet": {"stable": 1}}))
    running = thread.start()
    try:
        assert main(["info", "--target", running.target, "--version-label", "stable", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["version"] == 1
        assert main(["info", "--target", running.target, "--version-label", "canary"]) == 1
        assert "canary" in capsys.readouterr().err
    finally:
        thread.stop()
    with pytest.raises(SystemExit) as exited:
        main(["info", "--model-version", "1", "--version-label", "stable"])
    assert exited.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_a_tls_mismatch_is_named_as_tls(
    gateway: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path)
    # A TLS client to a plaintext gateway: OpenSSL's words are kept, but the message leads with TLS.
    tls = ["--tls-ca", str(pki.ca), "--tls-server-name", SERVER_NAME, "--retries", "0", "--timeout", "10"]
    assert main(["info", "--target", gateway.target, *tls]) == 1
    assert "TLS handshake failed: the gateway does not speak TLS" in capsys.readouterr().err
    # A plaintext client to a TLS gateway: told that it may need TLS.
    settings = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    with gateway_server(gateway, **settings) as target:
        assert main(["info", "--target", target, "--retries", "0", "--timeout", "10"]) == 1
    assert "if it requires TLS, connect with TLS" in capsys.readouterr().err


def test_the_gateway_binds_loopback_unless_secured_or_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path)
    assert bind_host(Settings()) == "127.0.0.1"
    assert bind_host(Settings(auth_mode="client_cert", tls_cert_file=pki.server_cert,
                              tls_key_file=pki.server_key, tls_client_ca_file=pki.ca)) == "[::]"  # fmt: skip
    assert bind_host(Settings(host="10.0.0.5")) == "10.0.0.5"
    with caplog.at_level(logging.WARNING, logger="allxai.server.security"):
        assert bind_host(Settings(host="[::]"), warn=True) == "[::]"
    assert "without authentication" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="allxai.server.security"):
        bind_host(Settings(host="127.0.0.1"), warn=True)
        bind_host(
            Settings(host="[::]", auth_mode="token", auth_tokens="t", auth_allow_plaintext_tokens=True),
            warn=True,
        )
    assert "without authentication" not in caplog.text
