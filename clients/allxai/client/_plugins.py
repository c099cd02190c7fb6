"""The commands that live outside the thin client (serve, train, evaluate, export, compare, check-run,
watch, lis, loadtest): found through their entry points, described, and loaded only when called."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, PackageNotFoundError, distribution, entry_points

from allxai.client._native_logs import import_quietly

#: The entry-point group where commands that live outside the thin client register themselves
#: (serve, train, evaluate, export, compare, watch, loadtest): see pyproject.toml.
COMMAND_GROUP = "allxai.commands"
#: The extras whose commands load TensorFlow.
_TENSORFLOW_EXTRAS = frozenset({"server", "train"})
_DISTRIBUTION = "allxai"


def plugins() -> dict[str, EntryPoint]:
    """The commands registered by whatever parts of allxai are installed, by name."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=COMMAND_GROUP):
        found.setdefault(entry.name, entry)
    return found


def _missing(extra: str) -> list[str]:
    """The requirements of ``allxai[extra]`` that are not installed (none for a plain command)."""
    if not extra:
        return []
    try:
        requires = distribution(_DISTRIBUTION).requires or []
    except PackageNotFoundError:
        return []
    missing = []
    for line in requires:
        requirement, _, marker = line.partition(";")
        if f'extra == "{extra}"' not in marker:
            continue
        name = re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0]
        if name.lower() == _DISTRIBUTION:
            continue  # allxai[train] asks for allxai[server]: the markers of that extra cover it
        try:
            distribution(name)
        except PackageNotFoundError:
            missing.append(name)
    return missing


def _unavailable(name: str, entry: EntryPoint) -> str | None:
    """Why ``allxai name`` cannot run here, with the command that installs what it needs; None if it can."""
    extra = entry.extras[0] if entry.extras else ""
    missing = _missing(extra)
    if not missing:
        return None
    return (
        f"allxai {name} is not installed here: it needs {', '.join(missing)}; "
        f"install it with: pip install 'allxai[{extra}]'"
    )


def run_plugin(name: str, entry: EntryPoint, argv: list[str]) -> int:
    """Load a registered command only now, and hand it the rest of the command line."""
    why = _unavailable(name, entry)
    if why is None:
        if set(entry.extras) & _TENSORFLOW_EXTRAS and not any(a in ("-h", "--help") for a in argv):
            # TensorFlow's C++ start-up lines (a CUDA "error" on every CPU machine) are not for people.
            import_quietly("tensorflow")
        try:
            run: Callable[[list[str]], int] = entry.load()
            return run(argv)
        except ImportError as exc:  # a broken or partial install
            why = f"allxai {name} cannot start: {exc}"
    print(why, file=sys.stderr)
    return 2


def plugin_help(entry: EntryPoint) -> str:
    extra = entry.extras[0] if entry.extras else ""
    if _missing(extra):
        return f"(not installed: pip install 'allxai[{extra}]')"
    try:
        doc = entry.load().__doc__ or ""
    except ImportError:
        return "(cannot be loaded: a broken install)"
    summary = doc.strip().split("\n")[0].rstrip(".")
    return f"{summary[:1].lower()}{summary[1:]}; see allxai {entry.name} -h"


def installed_version() -> str:
    """The installed allxai's version (``unknown`` when running from a tree that was never installed)."""
    try:
        return distribution(_DISTRIBUTION).version
    except PackageNotFoundError:
        return "unknown"
