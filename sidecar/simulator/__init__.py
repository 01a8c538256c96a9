"""A provider simulator that implements the real wire contract and signs for real."""
