"""A batch's group record as columns against the same records as a list of member maps.

Every claim and commit of a batch decodes its group record and encodes it again, and the client
decodes each group its watch brings (design/batching.md, "Group records"). This measures, per
member of a 250-episode CartPole batch as a commit leaves it (finished, a result and one
attempt each): encoding fresh records (a submission), decoding, and encoding the decoded
records again (a claim or a commit), in both forms. The maps are how groups were written
before columns, and are still read: ``model.decode_value`` reads them, and the encoding is
``zlib(pack([record.to_wire() ...]))`` as it was. Rounds in the order A B B A; the medians of
each figure's rounds are compared.

    python scripts/bench_group.py [--members 250] [--rounds 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openrange_mesh.model import (
    GROUP_FIELD,
    SCHEMA,
    Attempt,
    EpisodeRecord,
    EpisodeSpec,
    State,
    decode_records,
    encode_group,
    pack,
)


def batch(members: int) -> list[EpisodeRecord]:
    """A CartPole batch as its commit leaves it, built afresh (each spec its own params map)."""
    out = []
    for i in range(members):
        spec = EpisodeSpec(runtime="gymnasium", params={"env": "CartPole-v1"}, seed=i, batch=members)
        started = 1.7e9 + i * 2e-4
        attempt = Attempt(1, "host-3f2a9c", started, started + 2e-4, "succeeded", batch="417", token=123456)
        result = {"return": float(10 + i % 40), "steps": 10 + i % 40, "terminated": True, "truncated": False}
        out.append(
            EpisodeRecord(
                id=f"000000001e240-{0xC000 + 1 + i:04x}-3f2a9c",
                spec=spec,
                state=State.SUCCEEDED,
                owner="host-3f2a9c",
                created_at=1.7e9,
                started_at=started,
                finished_at=started + 2e-4,
                result=result,
                history=(attempt,),
                submitter="trainer-1",
            )
        )
    return out


def encode_maps(records: list[EpisodeRecord]) -> bytes:
    """A group as it was written before columns: a list of member maps, zlib level 1."""
    members = zlib.compress(pack([r.to_wire() for r in records]), 1)
    return pack({"state": "finished", "v": SCHEMA, GROUP_FIELD: members})


def per_member_us(run: Callable[[], object], members: int, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        run()
    return (time.perf_counter() - start) / repeat / members * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=8, help="rounds of A B B A")
    parser.add_argument("--repeat", type=int, default=40, help="groups per timing")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    fresh = batch(args.members)
    values = {"maps": encode_maps(fresh), "columns": encode_group(fresh)}
    assert decode_records(values["maps"]) == decode_records(values["columns"]) == fresh
    decoded = {form: decode_records(value) for form, value in values.items()}
    encoders: dict[str, Callable[[list[EpisodeRecord]], bytes]] = {"maps": encode_maps, "columns": encode_group}
    tasks: dict[str, Callable[[str], Callable[[], object]]] = {
        "encode fresh records": lambda form: lambda: encoders[form](fresh),
        "decode": lambda form: lambda: decode_records(values[form]),
        "encode decoded records": lambda form: lambda: encoders[form](decoded[form]),
    }
    times: dict[str, dict[str, list[float]]] = {task: {"maps": [], "columns": []} for task in tasks}
    for task, make in tasks.items():
        for form in ("maps", "columns"):
            per_member_us(make(form), args.members, 3)  # warm
        for _ in range(args.rounds):
            for form in ("maps", "columns", "columns", "maps"):
                times[task][form].append(per_member_us(make(form), args.members, args.repeat))
    figures: dict[str, Any] = {"members": args.members, "bytes": {f: len(v) for f, v in values.items()}, "us": {}}
    print(f"{'us per member':<26}{'maps':>8}{'columns':>9}{'ratio':>7}")
    for task, forms in times.items():
        maps, columns = statistics.median(forms["maps"]), statistics.median(forms["columns"])
        figures["us"][task] = {"maps": maps, "columns": columns, "ratio": columns / maps, "runs": forms}
        print(f"{task:<26}{maps:>8.2f}{columns:>9.2f}{columns / maps:>7.2f}")
    print(f"{'bytes of the value':<26}{len(values['maps']):>8}{len(values['columns']):>9}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
