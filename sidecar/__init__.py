"""tee-sidecar: a local proxy that verifies confidential-AI providers."""

__version__ = "0.1.0"
