"""Helpers the tests share (fixtures, environments, state snapshots, a worker process): not
tests themselves."""
