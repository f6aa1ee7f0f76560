"""The leader's web dashboard, the JSON API it uses, and the run report (design/dashboard.md)."""
