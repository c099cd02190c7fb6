"""The one settings object of the gateway, read from ``ALLXAI_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting of the gateway, with its default. Built once in ``main()`` and passed down."""

    model_config = SettingsConfigDict(env_prefix="ALLXAI_", env_nested_delimiter="__", extra="forbid")

    host: str = Field("[::]", description="Address the gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    backend: Literal["embedded"] = Field("embedded", description="Where the model runs.")
    model_base_path: Path = Field(
        Path("models"), description="Folder of SavedModels as <base>/<model_name>/<version>/."
    )
    default_model: str = Field("", description="Model used when a request names none; empty: the only one.")
    version_labels: dict[str, dict[str, int]] = Field(
        default_factory=dict, description='Version labels per model, e.g. {"allnet": {"stable": 1}}.'
    )
    max_image_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Largest encoded image accepted.")
    max_image_pixels: int = Field(40_000_000, gt=0, description="Largest decoded image (width x height).")
    max_message_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="gRPC message limit, both directions (gRPC's default is 4 MiB)."
    )
    max_specimen_images: int = Field(2000, gt=0, description="Most images in one ClassifySpecimen call.")
    predict_batch_size: int = Field(64, gt=0, description="Largest batch sent to the model at once.")
    predict_threads: int = Field(2, gt=0, description="Threads running the embedded model.")
    explain_default_samples: int = Field(1000, gt=0, description="LIME samples when a request sets none.")
    explain_max_samples: int = Field(10000, gt=0, description="Most LIME samples a request may ask for.")
    explain_max_in_flight: int = Field(
        4, gt=0, description="Prediction batches of one explanation in flight."
    )
    explain_compose_batch_size: int = Field(
        1000, gt=0, description="Masks per request when the model composes the perturbed images."
    )
    max_concurrent_explanations: int = Field(
        2, gt=0, description="Explanations running at once; more get RESOURCE_EXHAUSTED."
    )
    grace_period_seconds: float = Field(10.0, ge=0, description="Time in-flight calls get after SIGTERM.")
    enable_reflection: bool = Field(True, description="Serve gRPC server reflection.")
    enable_health: bool = Field(True, description="Serve grpc.health.v1.")
    log_level: str = Field("INFO", description="Python logging level.")
