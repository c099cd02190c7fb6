"""TensorFlow's C++ start-up lines are kept from people; real errors are not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from allxai.client._native_logs import is_noise


def test_start_up_information_and_the_gpu_probe_are_noise_and_errors_are_not() -> None:
    assert is_noise(b"I0000 00:00:1796013956.144119   19838 cudart_stub.cc:31] Could not find cuda drivers\n")
    assert is_noise(
        b"E0000 00:00:1796013965.352663 19838 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
    )
    assert is_noise(b"W0000 00:00:1.2 3 some_file.cc:1] a warning at start-up\n")
    assert not is_noise(b"E0000 00:00:1.2 3 saved_model.cc:9] could not read the SavedModel\n")
    assert not is_noise(b"Traceback (most recent call last):\n")


def test_importing_tensorflow_quietly_prints_no_start_up_lines(tmp_path: Path) -> None:
    # A module that writes a real problem to fd 2 while it is imported: it must still be seen.
    (tmp_path / "noisy_module.py").write_text(
        "import os\nos.write(2, b'I0000 00:00:1.0 1 x.cc:1] start-up information\\n')\n"
        "os.write(2, b'something real went wrong\\n')\n"
    )
    code = (
        "from allxai.client._native_logs import import_quietly\n"
        "import_quietly('noisy_module')\n"
        "import_quietly('tensorflow')\n"
        "import tensorflow as tf\n"
        "tf.config.list_physical_devices('GPU')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        timeout=300,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
        check=True,
    )
    err = result.stderr.decode()
    assert "something real went wrong" in err
    assert "cuInit" not in err and "I0000" not in err and "E0000" not in err, err
