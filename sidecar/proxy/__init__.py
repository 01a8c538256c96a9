"""The aiohttp proxy: the app, the relay, and the I/O side of attestation."""
