"""Keep TensorFlow's and gRPC's C++ start-up lines out of what a person reads.

On a machine without a GPU, TensorFlow's import prints ``E0000 ... failed call to cuInit: CUDA error``, which
reads as a failure although nothing failed, and a few ``I0000`` lines. They are written by C++ straight to
file descriptor 2, before any Python logging setting applies. ``import_quietly`` sets the documented
switches (``TF_CPP_MIN_LOG_LEVEL=3``, ``GRPC_VERBOSITY=ERROR``; a value the user set is kept) and imports the
module with fd 2 caught, then passes on every line that is not start-up information or the GPU probe.

The price: with level 3, TensorFlow's C++ code reports only fatal errors for the rest of the run. Python
exceptions, our own logs and gRPC's errors still show; to see TensorFlow's C++ errors and warnings too, set
``TF_CPP_MIN_LOG_LEVEL=0`` (or 1, 2) yourself.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tempfile

#: Lines of C++ start-up information: absl's info and warning lines, and the GPU probe of a CPU machine.
_NOISE = re.compile(
    rb"^[IW]\d{4} |cuInit|cuda drivers|cudart_stub|Unable to register cu(DNN|FFT|BLAS) factory|"
    rb"TF-TRT Warning|computation placer already registered|oneDNN custom operations"
)


def quiet_environment() -> None:
    """Ask TensorFlow and gRPC for errors only, unless the user chose otherwise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def is_noise(line: bytes) -> bool:
    """Whether a line written to fd 2 during an import is start-up information rather than a problem."""
    return bool(_NOISE.search(line))


def import_quietly(module: str) -> None:
    """Import ``module`` (if installed) with its C++ start-up lines filtered from standard error."""
    quiet_environment()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (an embedding host): import as it is
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
        finally:
            # Also when the import fails otherwise: what it printed is the explanation of the failure.
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught:
                if not is_noise(line):
                    _write(line)
            sys.stderr.flush()


def _write(line: bytes) -> None:
    """One caught line to standard error, whatever object stands in for it."""
    buffer = getattr(sys.stderr, "buffer", None)
    if buffer is not None:
        buffer.write(line)
    else:
        sys.stderr.write(line.decode("utf-8", errors="replace"))
