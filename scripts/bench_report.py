#!/usr/bin/env python3
"""``openrange-mesh report`` at scale: time and Python memory of one scan into a Tally, beside the
bare scan (``Catalog.episodes`` alone), at two sizes, one run.

Starts its own etcd (the local mesh's, with no agents), writes made-up records (tests/tallykit:
retries, failures with varied errors, lost and cancelled episodes over a day), then builds the
report in a fresh child process per figure and prints:

* seconds for the scan alone and for ``report.build`` (the HTML adds ~0.1 s);
* the child's peak of traced Python memory (tracemalloc) during each. Not ru_maxrss: on Linux
  a child's maxrss starts from its parent's at fork, and this parent holds the records it wrote.

    python scripts/bench_report.py                 # 20k and 100k records
    python scripts/bench_report.py --sizes 5000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from openrange_mesh.cli.local_mesh import LocalMesh
from openrange_mesh.keys import Keys
from openrange_mesh.registry import Put, open_registry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.tallykit import lives  # made-up lives, shared with the tests

TXN_OPS = 128
CHILD = r"""
import json, sys, time, tracemalloc
from openrange_mesh.dashboard import report
from openrange_mesh.keys import Keys
from openrange_mesh.ledger.catalog import Catalog
from openrange_mesh.registry import open_registry
registry, keys = open_registry(sys.argv[1], retry_timeout=30), Keys(sys.argv[2])
tracemalloc.start()
started = time.perf_counter()
if sys.argv[3] == "scan":
    n = sum(1 for _ in Catalog(registry, keys).episodes(page_size=report.PAGE_SIZE))
else:
    n = report.build(registry, keys)["total"]
took = time.perf_counter() - started
print(json.dumps({"records": n, "seconds": took, "peak_mib": tracemalloc.get_traced_memory()[1] / 2**20}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = parser.parse_args()
    figures = []
    with LocalMesh(agents=0, say=lambda line: print(f"# {line}", file=sys.stderr)) as mesh:
        url = f"etcd://{mesh.endpoint}"
        registry = open_registry(url, retry_timeout=30)
        try:
            now = time.time()
            for size in args.sizes:
                keys = Keys(f"r{size}")
                records = [life[-1] for life in lives(1, size, now - 86400, 86000)]
                for i in range(0, size, TXN_OPS):
                    registry.txn([], [Put(keys.episode(r.id), r.to_bytes()) for r in records[i : i + TXN_OPS]])
                del records
        finally:
            registry.close()
        for size in args.sizes:
            for what in ("scan", "report"):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, url, f"r{size}", what], capture_output=True, text=True, check=True
                )
                figure = {"what": what, **json.loads(out.stdout)}
                figures.append(figure)
                records, seconds, peak = figure["records"], figure["seconds"], figure["peak_mib"]
                print(f"{what:7} {records:7d} records  {seconds:6.2f} s  {peak:5.1f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
