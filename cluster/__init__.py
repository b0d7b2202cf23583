"""The `career` command line and the jobs it runs (the only package that knows about clusters)."""
