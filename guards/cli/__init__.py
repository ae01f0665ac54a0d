"""`python -m harmlens.guards`: argument parsing only; each command calls library functions."""
