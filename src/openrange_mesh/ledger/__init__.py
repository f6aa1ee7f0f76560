"""The state machine as etcd txns (design/README.md, "The episode state machine"): submit,
claim, commit, requeue, cancel, collect; where records live (homes), the queue entries (queue),
who owns an entry (owners), and reading it all back at one revision (catalog). Above the
registry seam; run by agents, clients and the dashboard alike."""
