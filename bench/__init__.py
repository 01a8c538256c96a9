"""Side-by-side benchmark of tee-sidecar against the direct, manual, pass-through and LiteLLM paths."""
