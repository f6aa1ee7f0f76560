"""``openrange-agent``: the long-running process on every host (design §6): its loop, the parts
that own what it knows, its lease, its leadership and its metrics."""
