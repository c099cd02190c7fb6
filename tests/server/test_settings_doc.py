"""The README documents every setting with its default: its table is the one the code generates."""

from __future__ import annotations

from allxai.server.settings import Settings
from allxai.server.settings_doc import markdown_table
from tests.conftest import REPO

README = REPO / "README.md"


def test_readme_settings_table_is_generated_from_settings() -> None:
    text = README.read_text()
    block = text.split("<!-- settings:start -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert block == markdown_table(), "run `python -m allxai.server.settings_doc` and paste it into README.md"
    for name in Settings.model_fields:
        assert f"`ALLXAI_{name.upper()}`" in block
