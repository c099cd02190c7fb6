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
from allxai.lis.record import (
    RecordError,
    next_record,
    read_record,
    report_from_record,
    report_to_record,
    write_record,
)
from allxai.lis.review import correct, finalize

__all__ = [
    "AIAST_CODE",
    "AIAST_DISPLAY",
    "AIAST_SYSTEM",
    "ConfigError",
    "Correction",
    "Failure",
    "LabReport",
    "LisConfig",
    "RecordError",
    "Reviewer",
    "UnmappedClassError",
    "build_bundle",
    "build_oru",
    "correct",
    "finalize",
    "load_config",
    "next_record",
    "parse_bundle",
    "parse_oru",
    "read_record",
    "report_from_record",
    "report_to_record",
    "to_fhir_json",
    "to_oru",
    "write_record",
]
