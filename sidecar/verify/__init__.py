"""Pure verification: bytes, trust anchors and an injected ``now`` in; reports out. No I/O."""
