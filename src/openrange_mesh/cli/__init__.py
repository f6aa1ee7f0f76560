"""Command-line entry points: ``openrange-agent`` and ``openrange-mesh`` (one module per command)."""
