"""``openrange-mesh``: the cluster from the command line. One module per command (hatch-style),
imported only when that command runs, so completion and ``--help`` stay fast."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any, NoReturn

import click

from .. import __version__
from ..config import (
    ENV_CACERT,
    ENV_CERT,
    ENV_ETCD,
    ENV_KEY,
    ENV_NAMESPACE,
    ENV_PASSWORD,
    ENV_RETRY_TIMEOUT,
    ENV_STORE,
    ENV_USER,
)
from ..errors import MeshError, TlsError, Unavailable
from ..keys import check_name
from .common import CONTEXT_SETTINGS, PROG, Mesh, configure_logging, etcd_options
from .safe import printable

# command name -> module under openrange_mesh.cli, in the order --help lists them
COMMANDS = {
    "ls": "ls",
    "show": "show",
    "logs": "logs",
    "hosts": "hosts",
    "dashboard": "dashboard",
    "submit": "submit",
    "wait": "wait",
    "cancel": "cancel",
    "report": "report",
    "snapshot": "snapshot",
    "artifacts": "artifacts",
    "gc": "gc",
    "up": "up",
}
EXIT_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 1, 2, 3, 130


class MeshGroup(click.Group):
    """Loads commands lazily, and turns our errors into one line on stderr and an exit status."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        command: click.Command = importlib.import_module(f"{__package__}.{COMMANDS[cmd_name]}").command
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _fail(ctx, usage_line(exc), EXIT_USAGE)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (Unavailable, TlsError) as exc:
            _fail(ctx, str(exc), EXIT_UNAVAILABLE)
        except MeshError as exc:
            _fail(ctx, str(exc), EXIT_ERROR)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", EXIT_INTERRUPTED)
        except BrokenPipeError:
            _quiet_stdout()  # the reader went away (ls | head): nothing left to say, nothing failed
            ctx.exit(0)
        except Exception as exc:
            _fail(ctx, f"internal error: {type(exc).__name__}: {exc} (--debug shows the traceback)", EXIT_ERROR)


def usage_line(exc: click.UsageError) -> str:
    """A usage error as one line, like every other error (click prints usage, a hint and the
    error on three)."""
    where = exc.ctx.command_path if exc.ctx is not None else PROG
    return f"{exc.format_message()} (see '{where} -h')"


def _fail(ctx: click.Context, message: str, code: int) -> NoReturn:
    if ctx.params.get("debug"):
        traceback.print_exc(file=sys.stderr)
    click.echo(f"{PROG}: {printable(message)}", err=True)  # one line, whatever the message holds
    ctx.exit(code)


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test runner's buffer)
        pass


HELP = f"""Run and inspect RL episodes across the mesh: list, submit, wait for, show and cancel
episodes; list hosts; report on a run; run a whole mesh on this machine with `up`.

\b
Examples:
  openrange-mesh up --demo 20                       # a local mesh: etcd + 3 agents
  export {ENV_ETCD}=10.0.0.5:2379,10.0.0.6:2379
  openrange-mesh hosts
  openrange-mesh submit --runtime gymnasium -p env=CartPole-v1 -n 100 --seed 0 | openrange-mesh wait -
  openrange-mesh ls --state failed -o wide
  openrange-mesh show ID --store /mnt/nfs/openrange
  openrange-mesh report --since 2h -o run.html      # one offline page: charts, hosts, errors

\b
Environment:
  {ENV_ETCD}           etcd endpoints (h1:2379,h2:2379, https://h1:2379) or a registry URL (--etcd)
  {ENV_CACERT} {ENV_CERT} {ENV_KEY} {ENV_USER} {ENV_PASSWORD}
                           etcd TLS files and credentials (--cacert --cert --key --user --password)
  ETCDCTL_*                etcdctl's ENDPOINTS, CACERT, CERT, KEY, USER, PASSWORD where ours are unset
  {ENV_NAMESPACE}      mesh namespace (--namespace; default "default")
  {ENV_STORE}          shared store for events and artifacts (--store)
  {ENV_RETRY_TIMEOUT}  seconds one etcd call may retry before giving up (default 5)
  NO_COLOR                 no colour even on a terminal (never any colour in a pipe)

\b
Exit status:
  0    success
  1    error (bad spec, unknown episode, an episode that did not succeed, a timeout)
  2    usage error (bad flags or arguments)
  3    etcd unreachable (down, refused, unresolvable, silent, or TLS failed)
  130  interrupted

\b
Shell completion (bash; zsh and fish likewise with zsh_source / fish_source):
  eval "$(_OPENRANGE_MESH_COMPLETE=bash_source openrange-mesh)"
"""


@click.group(PROG, cls=MeshGroup, help=HELP, context_settings=CONTEXT_SETTINGS)
@etcd_options
@click.option("--namespace", envvar=ENV_NAMESPACE, default="default", show_default=True, help="Mesh namespace.")
@click.option("--debug", is_flag=True, help="Log debug lines; show tracebacks on errors.")
@click.version_option(__version__, prog_name=PROG)
@click.pass_context
def cli(ctx: click.Context, /, etcd: str | None, namespace: str, debug: bool, **access: str | None) -> None:
    ctx.call_on_close(configure_logging(debug))
    try:
        check_name("namespace", namespace)
    except MeshError as exc:
        raise click.BadParameter(str(exc), param_hint="--namespace") from exc
    ctx.obj = Mesh(etcd=etcd, namespace=namespace, debug=debug, access=access)


def main() -> None:
    cli.main(prog_name=PROG)


if __name__ == "__main__":
    main()
