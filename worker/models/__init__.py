"""MILI."""
