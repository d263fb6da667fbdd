"""Process settings from the environment (``EXCHANGE_*``); built once and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class AppSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXCHANGE_", extra="ignore")

    database_url: str | None = None
    redis_url: str | None = None
    admin_token: str | None = None
    config_dir: Path = Path("config")
    # Every Redis key starts with this, so several exchanges (or test runs) share one Redis.
    redis_prefix: str = "ex:"
    data_dir: Path | None = None
    migrate_on_start: bool = True
    log_level: str = "INFO"
    log_json: bool = True
    # Connections open at start: a burst on a fresh worker used to wait while the pool
    # grew from 2 (each new connection a connect plus its jsonb codec lookup), 100-200 ms
    # of stalled leads at 300 leads/s (loadtests/README, tenth session).
    db_pool_min: int = Field(8, ge=1)
    db_pool_max: int = Field(20, ge=1)
    idempotency_days: int = Field(30, ge=1, le=3650)
    # Seconds an idle publisher connection stays open (uvicorn's default is 5). Longer than
    # the idle timeouts of publishers' pools and of load balancers (60 s is common): the
    # side that closes first must be the client, or a lead sent as the server closes the
    # connection fails in a way a POST cannot safely retry. Raise it above a longer one.
    keep_alive_s: int = Field(75, ge=1, le=86_400)
    # FastAPI's own OpenTelemetry hooks look the providers up on every request; metrics
    # are Prometheus here, so they stay off unless an operator wires OpenTelemetry in.
    otel: bool = False

    @model_validator(mode="after")
    def _pool_bounds(self) -> AppSettings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError(
                f"db_pool_min ({self.db_pool_min}) must not exceed db_pool_max ({self.db_pool_max})"
            )
        return self
