"""Domain errors are plain Python; the transport alone maps them to gRPC statuses."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from allxai.server import errors
from allxai.server.status import INTERNAL_MESSAGE, status_code, to_status


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidInput("options.seed", "too big"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.FailedPrecondition("no normal class"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ModelNotFound("nope"), grpc.StatusCode.NOT_FOUND),
        (errors.Overloaded("busy"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.BackendUnavailable("down"), grpc.StatusCode.UNAVAILABLE),
        (errors.BackendError("broke"), grpc.StatusCode.INTERNAL),
        (errors.Unauthenticated("who"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied("not you"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.AllxaiError("something"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_domain_error_has_its_status_code(error: errors.AllxaiError, code: grpc.StatusCode) -> None:
    assert status_code(error) == code


def test_a_subclass_takes_its_base_code() -> None:
    class NoSuchLabel(errors.ModelNotFound):
        pass

    assert status_code(NoSuchLabel("no label 'canary'")) == grpc.StatusCode.NOT_FOUND


def test_invalid_input_carries_bad_request_details() -> None:
    status = to_status(errors.InvalidInput("options.hide_color", "three values"))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "options.hide_color: three values"
    (key, raw), *_ = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    rich = status_pb2.Status.FromString(raw)
    bad = error_details_pb2.BadRequest()
    assert rich.details[0].Unpack(bad)
    violations = [(v.field, v.description) for v in bad.field_violations]
    assert violations == [("options.hide_color", "three values")]
    assert INTERNAL_MESSAGE not in status.details


def test_the_domain_and_the_core_import_no_grpc() -> None:
    """core.py says it knows no gRPC: not directly, nor through the errors it raises."""
    script = (
        "import sys, allxai.server.core, allxai.server.errors, allxai.server.backends.base\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'grpc_status')"
        " or m.startswith('google.rpc')))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
