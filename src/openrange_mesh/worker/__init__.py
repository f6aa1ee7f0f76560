"""The agent's worker processes (design/README.md, "Failure model"): the pool the agent drives, the child that runs
episodes, and the subreaper that leaves no process of an episode behind."""
