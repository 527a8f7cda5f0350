"""Agents run the tests of their batches through a runner and report results."""
