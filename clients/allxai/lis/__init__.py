"""Laboratory information system adapters: HL7 v2.5 ORU^R01 and FHIR R4 from allxai results.

``LabReport`` gathers a result (the SDK's ``ClassifyResult``, ``ExplainResult`` and/or ``SpecimenResult``
with the ``ModelDescription``); ``to_oru`` and ``to_fhir_json`` render it; ``allxai.lis.watch`` runs a
folder watcher that does this for every image an LIS drops. Importing this package never imports TensorFlow.
"""

from allxai.lis._report import (
    AIAST_CODE,
    AIAST_DISPLAY,
    AIAST_SYSTEM,
    Correction,
    Failure,
    LabReport,
    Reviewer,
)
from allxai.lis.config import ConfigError, LisConfig, UnmappedClassError, load_config
from allxai.lis.fhir import build_bundle, parse_bundle, to_fhir_json
from allxai.lis.hl7 import build_oru, parse_oru, to_oru

__all__ = [
    "AIAST_CODE",
    "AIAST_DISPLAY",
    "AIAST_SYSTEM",
    "ConfigError",
    "Correction",
    "Failure",
    "LabReport",
    "LisConfig",
    "Reviewer",
    "UnmappedClassError",
    "build_bundle",
    "build_oru",
    "load_config",
    "parse_bundle",
    "parse_oru",
    "to_fhir_json",
    "to_oru",
]
