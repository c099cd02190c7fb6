"""The LIS team's configuration: stable class codes, the LOINC code of the blast percentage, the FHIR
identifier systems and the performing laboratory, read from one TOML file (``lis.toml`` is the default and
the template).

Class codes are the LIS's dictionary and must not follow the model: a model class that the file does not map
is an :class:`UnmappedClassError`, raised before anything is sent, rather than a code made up on the fly.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "Coding",
    "ConfigError",
    "IdentifierSystems",
    "Laboratory",
    "LisConfig",
    "UnmappedClassError",
    "default_config",
    "load_config",
]

#: A class code: short enough that ``ALLXAI-P-<code>`` fits a 20-character CWE identifier.
_CLASS_CODE = re.compile(r"[A-Z0-9][A-Z0-9-]{0,10}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")


class ConfigError(ValueError):
    """The LIS configuration file is unreadable or breaks a rule (the message says which)."""


class UnmappedClassError(ValueError):
    """A model class that the LIS configuration gives no code for."""


@dataclass(frozen=True)
class Coding:
    """A code and its display text."""

    code: str
    display: str


@dataclass(frozen=True)
class IdentifierSystems:
    """FHIR identifier systems (URIs) of each kind of business identifier."""

    patient: str = "urn:allxai:lis:patient"
    specimen: str = "urn:allxai:lis:specimen"
    order: str = "urn:allxai:lis:order"
    practitioner: str = "urn:allxai:lis:practitioner"
    laboratory: str = "urn:allxai:lis:laboratory"
    result: str = "urn:allxai:request"
    device: str = "urn:allxai:model"
    observation: str = "urn:allxai:observation"


@dataclass(frozen=True)
class Laboratory:
    """The performing laboratory (FHIR ``performer``)."""

    name: str = "Haematology laboratory"
    identifier: str = ""


@dataclass(frozen=True)
class LisConfig:
    """What the LIS team owns: see ``lis.toml`` for every key."""

    classes: Mapping[str, Coding]
    blast_loinc: Coding | None = Coding("26446-3", "Blasts/100 leukocytes in Blood")
    systems: IdentifierSystems = field(default_factory=IdentifierSystems)
    laboratory: Laboratory = field(default_factory=Laboratory)
    #: Where the configuration came from, for messages.
    source: str = "the built-in lis.toml"

    def class_coding(self, label: str) -> Coding:
        """The stable code of model class ``label``; :class:`UnmappedClassError` when it has none."""
        try:
            return self.classes[label]
        except KeyError:
            raise UnmappedClassError(
                f"the model class {label!r} has no code in {self.source}: add it under [classes] "
                "(the LIS's dictionary must not change with the model)"
            ) from None

    def check_classes(self, names: Iterable[str]) -> None:
        """Raise :class:`UnmappedClassError` naming every class of ``names`` the configuration lacks."""
        missing = [name for name in names if name not in self.classes]
        if missing:
            raise UnmappedClassError(
                f"the model classes {', '.join(repr(n) for n in missing)} have no code in {self.source}: "
                "add them under [classes] (the LIS's dictionary must not change with the model)"
            )


def _text(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key} must be a string")
    return value


def _classes(table: Any, source: str) -> dict[str, Coding]:
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{source} needs a [classes] table mapping each model class to a code")
    found: dict[str, Coding] = {}
    seen: dict[str, str] = {}
    for label, entry in table.items():
        where = f"[classes.{label}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table with code and display")
        code, display = _text(entry, "code", where), _text(entry, "display", where)
        if not _CLASS_CODE.fullmatch(code):
            raise ConfigError(
                f"{where} code {code!r}: 1-11 characters of A-Z, 0-9 and '-', not starting with '-'"
            )
        if not display.strip():
            raise ConfigError(f"{where} needs a display text")
        if code in seen:
            raise ConfigError(f"{where} code {code!r} is already the code of class {seen[code]!r}")
        seen[code] = label
        found[label] = Coding(code, display.strip())
    return found


def _systems(table: Any) -> IdentifierSystems:
    if table is None:
        return IdentifierSystems()
    if not isinstance(table, dict):
        raise ConfigError("[identifiers] must be a table")
    defaults = IdentifierSystems()
    unknown = set(table) - set(defaults.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"[identifiers] has unknown keys: {', '.join(sorted(unknown))}")
    values = {}
    for key in defaults.__dataclass_fields__:
        value = _text(table, key, "[identifiers]", getattr(defaults, key))
        if not _URI.fullmatch(value):
            raise ConfigError(
                f"[identifiers].{key} must be an absolute URI (e.g. urn:oid:1.2.3), not {value!r}"
            )
        values[key] = value
    return IdentifierSystems(**values)


def _parse(data: dict[str, Any], source: str) -> LisConfig:
    lab_table = data.get("laboratory", {})
    if not isinstance(lab_table, dict):
        raise ConfigError("[laboratory] must be a table")
    laboratory = Laboratory(
        name=_text(lab_table, "name", "[laboratory]", Laboratory.name).strip() or Laboratory.name,
        identifier=_text(lab_table, "identifier", "[laboratory]", "").strip(),
    )
    blast: Coding | None = None
    if "blast_percentage" in data:
        table = data["blast_percentage"]
        if not isinstance(table, dict):
            raise ConfigError("[blast_percentage] must be a table with code and display")
        code = _text(table, "code", "[blast_percentage]")
        if not re.fullmatch(r"\d{1,7}-\d", code):
            raise ConfigError(
                f"[blast_percentage] code {code!r} is not a LOINC code (digits, '-', check digit)"
            )
        blast = Coding(code, _text(table, "display", "[blast_percentage]"))
    return LisConfig(
        classes=_classes(data.get("classes"), source),
        blast_loinc=blast,
        systems=_systems(data.get("identifiers")),
        laboratory=laboratory,
        source=source,
    )


def load_config(path: Path | None = None) -> LisConfig:
    """Read the LIS configuration at ``path`` (None: the built-in ``lis.toml``); :class:`ConfigError`."""
    if path is None:
        return default_config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the LIS configuration {path}: {exc}") from exc
    return _parse(data, str(path))


@lru_cache(maxsize=1)
def default_config() -> LisConfig:
    """The built-in configuration (``lis.toml`` in this package), read once."""
    text = resources.files("allxai.lis").joinpath("lis.toml").read_text(encoding="utf-8")
    return _parse(tomllib.loads(text), "the built-in lis.toml")
