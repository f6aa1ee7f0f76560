"""``openrange-agent --etcd ENDPOINTS``: the agent every host runs. It takes etcd's endpoints,
TLS files and credentials as etcdctl does (``--endpoints``, ``--cacert`` ... and ``ETCDCTL_*``).

Signals: SIGTERM (or a first SIGINT) drains: stop claiming, let running episodes finish within
``--grace`` seconds, hand the rest back, revoke the lease, exit 0. A second SIGINT exits at once
(workers stop their episodes); the lease expires and peers requeue the work.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

import click

from ..agent.agent import Agent
from ..config import (
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_STORE,
    ENV_CACHE_DIR,
    ENV_CACHE_SIZE,
    ENV_CAPACITY,
    ENV_DASHBOARD_HOST,
    ENV_DASHBOARD_PORT,
    ENV_DASHBOARD_TOKEN,
    ENV_DASHBOARD_URL,
    ENV_ETCD,
    ENV_HOST_ID,
    ENV_LABELS,
    ENV_LOG_LEVEL,
    ENV_METRICS_PORT,
    ENV_NAMESPACE,
    ENV_REPORT_INTERVAL,
    ENV_RETENTION,
    ENV_STORE,
    ENV_STORE_GC_INTERVAL,
    ENV_STORE_GRACE,
    ETCDCTL_ENDPOINTS,
    Settings,
    etcd_endpoints,
)
from ..errors import MeshError, TlsError, Unavailable
from .common import etcd_options

log = logging.getLogger("openrange_mesh.agent")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@etcd_options
@click.option("--host-id", envvar=ENV_HOST_ID, help="This host's id (default: the hostname).")
@click.option("--namespace", envvar=ENV_NAMESPACE, help="Mesh namespace (default: default).")
@click.option("--capacity", type=int, envvar=ENV_CAPACITY, help="Worker processes (default: CPU count).")
@click.option(
    "--store",
    envvar=ENV_STORE,
    help="The mesh's shared store (events, artifacts, snapshots): a path, file://, s3://. Default: the "
    f"store the mesh's first agent recorded, else {DEFAULT_STORE} (this host only).",
)
@click.option(
    "--cache-dir",
    envvar=ENV_CACHE_DIR,
    help="Where this host caches snapshots (default ~/.cache/openrange-mesh/snapshots).",
)
@click.option(
    "--cache-size",
    envvar=ENV_CACHE_SIZE,
    help="Bytes of snapshots the cache keeps beyond those in use: 20G, 512M (default 20G).",
)
@click.option(
    "--store-gc-interval",
    type=click.FloatRange(min=0),
    envvar=ENV_STORE_GC_INTERVAL,
    help="Seconds between the leader's collections in the store (default 3600; 0: never).",
)
@click.option(
    "--store-grace",
    type=click.FloatRange(min=0),
    envvar=ENV_STORE_GRACE,
    help="Seconds a store object must be unwritten before collection may remove it (default 3600).",
)
@click.option("--ttl", type=int, help="Lease TTL in seconds (default 10; min 2). Timing scales with it.")
@click.option("--labels", envvar=ENV_LABELS, help="Host labels k=v,k2=v2.")
@click.option(
    "--retention",
    type=float,
    envvar=ENV_RETENTION,
    help="Seconds to keep acked finished records (default 7 days; 0 keeps all). The leader collects.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    envvar=ENV_METRICS_PORT,
    help="Also serve Prometheus /metrics on this port, every interface (default: only through the dashboard).",
)
@click.option("--grace", type=float, default=30.0, show_default=True, help="Drain grace period on SIGTERM.")
@click.option(
    "--dashboard-host", envvar=ENV_DASHBOARD_HOST, help="Address the HTTP server listens on (default 0.0.0.0)."
)
@click.option(
    "--dashboard-port",
    type=click.IntRange(0, 65535),
    envvar=ENV_DASHBOARD_PORT,
    help=f"Its port (default {DEFAULT_DASHBOARD_PORT}; 0: a free port).",
)
@click.option(
    "--dashboard-url", envvar=ENV_DASHBOARD_URL, help="How browsers reach it (default http://<hostname>:<port>)."
)
@click.option(
    "--dashboard-token", envvar=ENV_DASHBOARD_TOKEN, help="Needed to cancel from the page (default: read-only)."
)
@click.option("--no-dashboard", is_flag=True, help="Serve no HTTP at all (the mesh gets no dashboard from this host).")
@click.option(
    "--report-interval",
    type=click.FloatRange(min=0),
    envvar=ENV_REPORT_INTERVAL,
    help="Seconds between run reports the leader writes to the store (default 600; 0: never).",
)
@click.option("--log-level", envvar=ENV_LOG_LEVEL, default="INFO", show_default=True)
def main(
    etcd: str | None,
    host_id: str | None,
    namespace: str | None,
    capacity: int | None,
    store: str | None,
    cache_dir: str | None,
    cache_size: str | None,
    store_gc_interval: float | None,
    store_grace: float | None,
    ttl: int | None,
    labels: str | None,
    retention: float | None,
    metrics_port: int | None,
    grace: float,
    dashboard_host: str | None,
    dashboard_port: int | None,
    dashboard_url: str | None,
    dashboard_token: str | None,
    no_dashboard: bool,
    report_interval: float | None,
    log_level: str,
    **access: str | None,
) -> None:
    """Join the mesh and run episodes.

    \b
    Examples:
      openrange-agent --etcd 10.0.0.5:2379,10.0.0.6:2379 --store /mnt/nfs/openrange
      OPENRANGE_ETCD=127.0.0.1:2379 openrange-agent --capacity 4 --labels gpu=a100
      openrange-agent --endpoints https://10.0.0.5:2379 --cacert ca.pem --cert me.pem --key me-key.pem

    Every agent serves HTTP: the leader the mesh's dashboard, the others a redirect to it
    (`openrange-mesh dashboard` prints its URL).
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        if not etcd_endpoints(etcd):
            raise click.UsageError(f"--etcd (or {ENV_ETCD}, or {ETCDCTL_ENDPOINTS}) is required")
        settings = Settings.load(
            {
                **access,
                "registry": etcd,
                "host_id": host_id,
                "namespace": namespace,
                "capacity": capacity,
                "store": store,
                "cache_dir": cache_dir,
                "cache_size": cache_size,
                "store_gc_interval": store_gc_interval,
                "store_grace": store_grace,
                "labels": labels,
                "retention": retention,
                "dashboard": False if no_dashboard else None,
                "dashboard_host": dashboard_host,
                "dashboard_port": dashboard_port,
                "dashboard_url": dashboard_url,
                "dashboard_token": dashboard_token,
                "report_interval": report_interval,
                "metrics_port": metrics_port,
            }
        )
        if ttl is not None:
            settings = settings.with_timing(ttl)
        agent = Agent(settings)
        if agent.settings.store == DEFAULT_STORE:  # neither given nor recorded by the mesh
            log.warning(
                "no --store given and the mesh has none: events, artifacts and snapshots go to %s on this "
                "host only; peers and `openrange-mesh logs` elsewhere will not see them (pass a shared path "
                "or s3:// URL)",
                DEFAULT_STORE,
            )
        _install_signals(agent, grace)
        agent.run()
    except MeshError as exc:
        click.echo(f"openrange-agent: {exc}", err=True)
        sys.exit(3 if isinstance(exc, Unavailable | TlsError) else 1)


def _install_signals(agent: Agent, grace: float) -> None:
    interrupts = 0

    def on_term(signum: int, frame: FrameType | None) -> None:
        agent.drain(grace)

    def on_int(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            log.info("interrupted: draining (interrupt again to exit at once)")
            agent.drain(grace)
            return
        log.warning("second interrupt: exiting now; the lease expiry hands work back")
        agent.pool.abandon()  # not close(): that waits for the workers, and this may interrupt the loop mid-change
        os._exit(130)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)


if __name__ == "__main__":
    main()
