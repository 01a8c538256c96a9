"""Adversarial tests: a tampering man-in-the-middle between tee-sidecar and the simulator."""
