"""``openrange-mesh submit``: episodes from flags or from a JSON-lines file."""

from __future__ import annotations

import json
from typing import IO, Any

import click

from ..errors import MeshError, SpecError
from ..model import EVENT_LEVELS, MAX_BATCH, EpisodeSpec
from ..specs import MAX_PARAMS_DEPTH, check_spec, check_specs
from .common import Mesh, dump_json, json_or_string, output_option, parse_pairs, pass_mesh
from .safe import printable

# The flags that describe one spec; --file replaces all of them.
SPEC_FLAGS = (
    "runtime",
    "params",
    "count",
    "seed",
    "timeout",
    "progress_timeout",
    "on_timeout",
    "max_attempts",
    "snapshot",
    "idempotency_key",
    "labels",
    "events",
)


@click.command("submit", short_help="Submit episodes from flags or a JSON-lines file.")
@click.option("--runtime", help="Runtime name: gymnasium, command, sleep, an entry point or module:attr.")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="K=V",
    help="A runtime parameter (repeatable); V is parsed as JSON when it parses, else kept as a string.",
)
@click.option("-n", "--count", type=click.IntRange(min=1), help="Submit this many copies (default 1).")
@click.option("--seed", type=click.IntRange(min=0), help="Seed; with --count N the seeds are S..S+N-1.")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", help="Wall-clock limit per attempt."
)
@click.option(
    "--progress-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Fail an attempt that emits no event for this long.",
)
@click.option("--on-timeout", type=click.Choice(["fail", "retry"]), help="What a timeout does (default fail).")
@click.option("--max-attempts", type=click.IntRange(min=1), help="Attempts before an episode is lost (default 3).")
@click.option("--snapshot", metavar="REF", help="A snapshot in the store to start from.")
@click.option("--idempotency-key", metavar="KEY", help="Submitting the same key again returns the first episode.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="A label (repeatable).")
@click.option(
    "--batch",
    type=click.IntRange(min=1, max=MAX_BATCH),
    help="Let one claim take up to B episodes of this submission.",
)
@click.option(
    "--events",
    type=click.Choice(EVENT_LEVELS),
    help="What the store keeps of each attempt's events: all (default), summary (reset and terminal), none.",
)
@click.option(
    "-f",
    "--file",
    "spec_file",
    type=click.File("rb"),
    metavar="PATH",
    help="Specs as JSON lines, one object per line ('-' for stdin); replaces the spec flags.",
)
@output_option("ids", "json")
@pass_mesh
def command(mesh: Mesh, /, spec_file: IO[bytes] | None, batch: int | None, output: str, **flags: Any) -> None:
    """Submit episodes; print their ids, one per line.

    Every spec is checked (fields, runtime, its params) before any is submitted: one bad spec,
    or one bad line of --file, submits nothing.

    \b
    Examples:
      openrange-mesh submit --runtime gymnasium -p env=CartPole-v1 --count 100 --seed 0
      openrange-mesh submit --runtime sleep -p seconds=2 -p mode=fail --label run=smoke
      openrange-mesh submit --runtime command -p 'argv=["python", "rollout.py"]' --timeout 600
      openrange-mesh submit --file specs.jsonl --batch 16 | openrange-mesh wait -
    """
    if spec_file is not None:
        given = [f"--{name.replace('_', '-')}" for name in SPEC_FLAGS if flags.get(name)]
        if given:
            raise click.UsageError(f"--file replaces the spec flags; drop {', '.join(given)}")
        specs = read_spec_file(spec_file)
    elif not flags["runtime"]:
        raise click.UsageError("give --runtime (with its --param flags) or --file")
    else:
        specs = specs_from_flags(**flags)
    ids = mesh.client().submit(specs, batch=batch)
    click.echo(dump_json(ids) if output == "json" else "\n".join(printable(i) for i in ids))


def specs_from_flags(
    runtime: str,
    params: tuple[str, ...],
    count: int | None,
    seed: int | None,
    labels: tuple[str, ...],
    idempotency_key: str | None,
    **options: Any,
) -> list[EpisodeSpec]:
    count = count or 1
    if idempotency_key and count > 1:
        raise click.UsageError("--idempotency-key names one episode: it cannot go with --count above 1")
    fields: dict[str, Any] = {
        "runtime": runtime,
        "params": parse_pairs(params, "--param", json_or_string),
        "labels": parse_pairs(labels, "--label"),
    }
    fields.update({k: v for k, v in options.items() if v is not None})
    if idempotency_key:
        fields["idempotency_key"] = idempotency_key
    return check_specs({**fields, "seed": None if seed is None else seed + i} for i in range(count))


def read_spec_file(stream: IO[bytes]) -> list[EpisodeSpec]:
    """Every spec in ``stream``, checked; blank lines and ``#`` comments are skipped. The first
    bad line raises SpecError naming the file, the line (and the column where it is known) and
    what is wrong with it: bytes that are not UTF-8, JSON that does not parse or nests too
    deep, a spec that does not check."""
    name = getattr(stream, "name", "<stdin>")
    name = "<stdin>" if name in ("-", "<stdin>") else str(name)
    specs: list[EpisodeSpec] = []
    for number, raw in enumerate(stream, start=1):
        where = f"{name} line {number}"
        data = _parse_line(raw, where)
        if data is None:
            continue
        try:
            specs.append(check_spec(data))
        except SpecError as exc:
            raise SpecError(f"{where}: {exc.field}", exc.problem) from exc
        except (MeshError, TypeError) as exc:  # TypeError: a third-party runtime's validate
            raise SpecError(where, str(exc)) from exc
    if not specs:
        raise SpecError(name, "no specs in the file")
    return specs


def _parse_line(raw: bytes, where: str) -> dict[str, Any] | None:
    """One line's spec object, or None for a blank or comment line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = len(raw[: exc.start].decode("utf-8", "replace")) + 1
        raise SpecError(where, f"not UTF-8 at column {column} (byte 0x{raw[exc.start]:02x})") from None
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SpecError(where, f"not JSON at column {exc.colno} ({exc.msg})") from None
    except RecursionError:  # json recurses per level: ~1000 levels exhaust the stack
        deep = _too_deep_at(line, MAX_PARAMS_DEPTH + 1)
        at = f" at column {deep}" if deep else ""
        raise SpecError(where, f"JSON nested deeper than {MAX_PARAMS_DEPTH + 1} levels{at}") from None
    except ValueError as exc:  # an integer of more digits than int() takes, and the like
        raise SpecError(where, f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SpecError(where, f"expected a JSON object, got {type(data).__name__}")
    return data


def _too_deep_at(line: str, limit: int) -> int | None:
    """The column where ``line``'s JSON first nests deeper than ``limit``, if it does."""
    depth, in_string, escaped = 0, False, False
    for column, char in enumerate(line, start=1):
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return column
        elif char in "]}":
            depth -= 1
    return None
