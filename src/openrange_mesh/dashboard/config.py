"""What the agent's HTTP child needs to know (``DashboardConfig``): picklable, built from Settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Settings

# Seconds the leader keeps its episode index after the last request that needed it (an open
# page's stream asks four times a second): following every record costs the leader's host a
# share of a core, which nobody should pay for a dashboard nobody looks at (design/dashboard.md,
# "What the leader's child keeps").
INDEX_KEEP = 600.0


@dataclass(frozen=True)
class DashboardConfig:
    """What the child needs, picklable."""

    registry: str = field(repr=False)  # may hold a password
    namespace: str
    host_id: str
    store: str
    bind_host: str
    port: int
    token: str = field(default="", repr=False)
    metrics_port: int | None = None  # the agent's own metrics on loopback, proxied at /metrics
    log_level: str = "INFO"
    report_interval: float = 0.0  # seconds between reports written to the store while leading; 0: none
    index_keep: float = INDEX_KEEP

    @classmethod
    def of(cls, settings: Settings, metrics_port: int | None = None) -> DashboardConfig:
        return cls(
            settings.registry,
            settings.namespace,
            settings.host_id,
            settings.store,
            settings.dashboard_host,
            settings.dashboard_port,
            settings.dashboard_token,
            metrics_port,
            settings.log_level,
            settings.report_interval,
        )
