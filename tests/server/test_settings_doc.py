"""docs/settings.md documents every setting with its default: its table is the one the code generates."""

from __future__ import annotations

from allxai.server.settings import Settings
from allxai.server.settings_doc import markdown_table
from tests.conftest import REPO

SETTINGS_DOC = REPO / "docs" / "settings.md"


def test_settings_doc_table_is_generated_from_settings() -> None:
    text = SETTINGS_DOC.read_text()
    block = text.split("<!-- settings:start -->\n", 1)[1].split("<!-- settings:end -->", 1)[0]
    assert block == markdown_table(), (
        "run `python -m allxai.server.settings_doc` and paste it into docs/settings.md, "
        "between <!-- settings:start --> and <!-- settings:end -->"
    )
    for name in Settings.model_fields:
        assert f"`ALLXAI_{name.upper()}`" in block
