"""The leader's web dashboard, the JSON API it uses, and the run report (design §11a)."""
