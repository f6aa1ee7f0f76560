"""``openrange-agent``: the long-running process on every host (design/README.md, "The agent"):
its loop, the parts that own what it knows, its lease, its leadership and its metrics."""
