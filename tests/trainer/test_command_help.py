"""Every option of the trainer's commands says what it does, and evaluate says what it left out."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import pytest

from allxai.trainer import commands


@pytest.mark.parametrize(
    "command",
    [
        commands.train_main,
        commands.evaluate_main,
        commands.export_main,
        commands.compare_main,
        commands.check_run_main,
    ],
)
def test_every_option_has_help(
    command: Callable[[Sequence[str]], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> object:
        seen.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        command([])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", original)
    (parser,) = seen
    silent = [a.option_strings or [a.dest] for a in parser._actions if not a.help]
    assert not silent, f"{parser.prog}: options without help: {silent}"


def test_evaluate_says_what_it_left_out() -> None:
    data = {
        "duplicates_removed": 5,
        "skipped": [
            ["a.txt", "not an image file name"],
            ["b.txt", "not an image file name"],
            ["c.png", "unreadable"],
        ],
    }
    assert commands.skipped_lines(data) == [
        "left out 5 byte-identical copies of other images (counted once)",
        "skipped 3 files: 2 not an image file name; 1 unreadable",
    ]
    assert commands.skipped_lines({"duplicates_removed": 0, "skipped": []}) == []
