"""Domain logic above the seams: the episode ledger, listing, the agent, the trainer client."""
