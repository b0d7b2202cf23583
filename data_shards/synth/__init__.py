"""The career simulator: an explicit generative process with an exact oracle (see generate.py)."""
