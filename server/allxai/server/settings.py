"""The one settings object of the gateway, read from ``ALLXAI_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from allxai.contract.card import check_class_names


class Settings(BaseSettings):
    """Every setting of the gateway, with its default. Built once in ``main()`` and passed down."""

    model_config = SettingsConfigDict(env_prefix="ALLXAI_", env_nested_delimiter="__", extra="forbid")

    host: str = Field(
        "",
        description=(
            "Address the gRPC server and its health port bind. Empty: every interface ([::]) when TLS and "
            "auth are both on, else loopback (127.0.0.1), so a gateway without them is not reachable from "
            "other machines by accident. Every interface without auth logs a warning."
        ),
    )
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    backend: Literal["embedded", "tfserving"] = Field(
        "embedded", description="Where the model runs: in this process, or TensorFlow Serving."
    )
    model_base_path: Path = Field(
        Path("models"), description="Folder of SavedModels as <base>/<model_name>/<version>/."
    )
    default_model: str = Field("", description="Model used when a request names none; empty: the only one.")
    version_labels: dict[str, dict[str, int]] = Field(
        default_factory=dict, description='Version labels per model, e.g. {"allnet": {"stable": 1}}.'
    )
    class_names: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "Class names in output order for models without a model card, by model name, "
            'e.g. {"foreign": ["normal", "blast"]}; a card\'s names win; none: class_0, class_1, ...'
        ),
    )
    max_image_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Largest encoded image accepted.")
    max_image_pixels: int = Field(40_000_000, gt=0, description="Largest decoded image (width x height).")
    max_message_bytes: int = Field(
        33 * 1024 * 1024,
        gt=0,
        description=(
            "Largest ClassifySpecimen request and largest response (gRPC's default is 4 MiB). Classify and "
            "Explain requests may hold one image plus 64 KiB; other calls 64 KiB. The SDK sends a specimen "
            "in calls of at most 32 MiB of images."
        ),
    )
    max_specimen_images: int = Field(2000, gt=0, description="Most images in one ClassifySpecimen call.")
    domain_policy: Literal["flag", "refuse"] = Field(
        "flag",
        description=(
            "Images outside the model's training domain: flag answers and says so; refuse answers Classify "
            "and Explain with FAILED_PRECONDITION and the reason (a specimen is still answered, its cells "
            "outside left out of the blast fraction). Models without a domain gate are never refused."
        ),
    )
    specimen_review_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="A specimen needs review when more than this share of its cells lie outside the domain.",
    )
    predict_batch_size: int = Field(64, gt=0, description="Largest batch sent to the model at once.")
    predict_threads: int = Field(2, gt=0, description="Threads running the embedded model.")
    explain_model_batch_size: int = Field(
        16,
        gt=0,
        description=(
            "Largest batch of an explanation's images per embedded model call (at most "
            "predict_batch_size): smaller batches let a Classify share the cores sooner."
        ),
    )
    predict_reserved_threads: int = Field(
        1,
        ge=0,
        description=(
            "Of the embedded model's threads, how many run only Classify work, so that a classification "
            "never waits for an explanation batch to end (at most predict_threads - 1)."
        ),
    )
    explain_yield_ms: int = Field(
        500,
        ge=0,
        description=(
            "How long an explanation batch of the embedded model waits, at most, while a classification "
            "is in progress, so that Classify does not share the cores with batch after batch "
            "(0: never wait)."
        ),
    )
    explain_default_samples: int = Field(1000, gt=0, description="LIME samples when a request sets none.")
    explain_max_samples: int = Field(10000, gt=0, description="Most LIME samples a request may ask for.")
    explain_max_in_flight: int = Field(
        4, gt=0, description="Prediction batches of one explanation in flight."
    )
    explain_max_segments: int = Field(
        1000, ge=2, description="Most superpixels an explanation may have; more get INVALID_ARGUMENT."
    )
    explain_compose_batch_size: int = Field(
        64,
        gt=0,
        description=(
            "Masks per request when the model composes the perturbed images; each request's end is a "
            "progress report of StreamExplain (64: sixteen for lime's 1,000 samples, in whole chunks of "
            "the compose signature and of the embedded model's batches)."
        ),
    )
    max_concurrent_explanations: int = Field(
        2, gt=0, description="Explanations running at once; more get RESOURCE_EXHAUSTED."
    )
    grace_period_seconds: float = Field(
        25.0,
        ge=0,
        description=(
            "After SIGTERM, new calls are refused and calls in flight (explanations waiting for a slot "
            "included) get this long to finish. It must fit in Kubernetes' terminationGracePeriodSeconds "
            "(30 s by default) less the preStop pause; deploy/k8s sets 60 s inside 75 s."
        ),
    )
    enable_reflection: bool = Field(True, description="Serve gRPC server reflection.")
    enable_health: bool = Field(True, description="Serve grpc.health.v1.")
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text or as JSON objects.")
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Extra plaintext port with only grpc.health.v1, for kubelet probes under TLS; 0: none.",
    )
    # --- TensorFlow Serving backend -------------------------------------------------------------
    tfserving_target: str = Field(
        "localhost:8500",
        description="gRPC target of TensorFlow Serving; dns:///<headless-service>:8500 balances per request.",
    )
    tfserving_models: list[str] = Field(
        default_factory=list, description='Model names to serve from TensorFlow Serving, e.g. ["allnet"].'
    )
    tfserving_timeout_seconds: float = Field(
        30.0, gt=0, description="Deadline of a model call when the caller gave none."
    )
    tfserving_retries: int = Field(3, ge=0, description="Retries of a call that got UNAVAILABLE.")
    tfserving_batch_size: int = Field(64, gt=0, description="Largest batch of images per PredictRequest.")
    tfserving_max_in_flight: int = Field(
        8,
        gt=0,
        description="Explanation PredictRequests in flight at once (Classify has its own limit).",
    )
    tfserving_tls: bool = Field(False, description="Use TLS on the channel to TensorFlow Serving.")
    tfserving_ca_file: Path | None = Field(
        None, description="CA bundle that signed TensorFlow Serving's certificate."
    )
    tfserving_cert_file: Path | None = Field(
        None, description="Client certificate for mTLS to TensorFlow Serving."
    )
    tfserving_key_file: Path | None = Field(None, description="Key of that client certificate.")
    tfserving_server_name: str = Field(
        "", description="Name to check TensorFlow Serving's certificate against; empty: the target's host."
    )
    # --- Overload -------------------------------------------------------------------------------
    max_queued_explanations: int = Field(
        8, ge=0, description="Explanations waiting for a slot; more get RESOURCE_EXHAUSTED at once."
    )
    max_concurrent_classify: int = Field(
        256, gt=0, description="Classify and ClassifySpecimen calls in flight; more get RESOURCE_EXHAUSTED."
    )
    # --- Security -------------------------------------------------------------------------------
    tls_cert_file: Path | None = Field(
        None, description="Server certificate (PEM); with the key, serves TLS."
    )
    tls_key_file: Path | None = Field(None, description="Server private key (PEM).")
    tls_client_ca_file: Path | None = Field(
        None, description="CA of client certificates; when set, clients must present one (mTLS)."
    )
    auth_mode: Literal["none", "token", "client_cert", "token_or_client_cert"] = Field(
        "none", description="Who may call: anyone, a bearer token, a client certificate, or either."
    )
    auth_tokens_file: Path | None = Field(None, description="File of accepted bearer tokens, one per line.")
    auth_tokens: SecretStr | None = Field(
        None, description="Accepted bearer tokens, comma-separated (prefer the file)."
    )
    auth_allowed_client_names: list[str] = Field(
        default_factory=list,
        description="Client certificate common names allowed in; empty: any certificate the CA signed.",
    )
    auth_allow_plaintext_tokens: bool = Field(
        False,
        description=(
            "Accept bearer tokens without TLS (only behind a proxy or mesh that encrypts the hop); "
            "otherwise token auth without TLS refuses to start. A warning is logged at start."
        ),
    )
    # --- Observability and audit ----------------------------------------------------------------
    enable_metrics: bool = Field(True, description="Serve Prometheus /metrics over HTTP.")
    metrics_port: int = Field(9090, ge=0, le=65535, description="Port of /metrics; 0 picks a free one.")
    metrics_host: str = Field("0.0.0.0", description="Address the metrics port binds.")
    audit_path: Path | None = Field(None, description="Append-only JSON Lines audit trail; unset: none.")
    audit_fsync: Literal["always", "interval", "never"] = Field(
        "always", description="fsync after every record, at most every interval, or leave it to the OS."
    )
    audit_fsync_interval_seconds: float = Field(1.0, gt=0, description="Interval of the 'interval' policy.")

    @field_validator("class_names")
    @classmethod
    def _distinct_class_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        # Duplicates or blanks would make answers ambiguous; say so at start-up, not per request. The
        # rules are the model card's (allxai.contract.card), so a name a card may carry a setting may too.
        for model, names in value.items():
            check_class_names(names, f"ALLXAI_CLASS_NAMES for model {model!r}")
        return value
