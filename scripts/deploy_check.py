"""What an app sees through a deployed sidecar, checked with the official ``openai`` package.

Used by ``scripts/test-image.sh`` (the container image) and ``scripts/test-systemd.sh`` (the
systemd unit), with the sidecar pointed at the built-in simulator (``tee-sidecar simulate``):

1. a plain chat completion arrives with ``x-tee-verified: true`` and a signing address;
2. a streamed one (buffer mode, the shipped configs' setting) arrives the same way;
3. with the simulator's ``tamper_response`` fault on (one byte of the answer flipped after it was
   signed, ``sidecar/simulator/provider.py``), the app gets an OpenAI-shaped 502 whose code says
   the signature does not cover the bytes, and no answer text;
4. the fault is cleared again.

Prints one line per step; exits 0 when all pass, 1 at the first failure. Prompts and answers are
not printed beyond a short prefix of the simulator's fixed answer.

    python scripts/deploy_check.py --base-url http://127.0.0.1:8787/v1 \\
        --simulator http://127.0.0.1:8900
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

MODEL = "TEE/simulated-llama-3.3-70b"
#: The failure code a byte altered after signing must produce (docs/verification.md).
TAMPER_CODE = "signature.response_hash_mismatch"


def _set_faults(simulator: str, faults: dict[str, object]) -> None:
    request = urllib.request.Request(
        f"{simulator}/_simulator/faults", data=json.dumps(faults).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def _fail(message: str) -> int:
    print(f"deploy-check: FAIL: {message}", flush=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the four steps; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="the sidecar's OpenAI base URL (…/v1)")
    parser.add_argument("--simulator", required=True, help="the simulator's root URL")
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args(argv)

    import openai
    from openai.types.chat import ChatCompletionMessageParam

    client = openai.OpenAI(base_url=args.base_url, api_key="unused-the-sidecar-holds-the-key",
                           max_retries=0, timeout=60)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What protects this conversation?"}]
    _set_faults(args.simulator, {})

    raw = client.chat.completions.with_raw_response.create(model=args.model, messages=messages)
    text = raw.parse().choices[0].message.content or ""
    if raw.headers.get("x-tee-verified") != "true" or not text:
        return _fail(f"plain completion: x-tee-verified={raw.headers.get('x-tee-verified')!r}")
    print(f"deploy-check: plain completion: HTTP {raw.status_code}, x-tee-verified: true, "
          f"signed by {raw.headers.get('x-tee-signing-address')}, {text[:32]!r}…", flush=True)

    with client.chat.completions.with_streaming_response.create(
            model=args.model, messages=messages, stream=True) as response:
        streamed = "".join(chunk.choices[0].delta.content or ""
                           for chunk in response.parse() if chunk.choices)
        verified = response.headers.get("x-tee-verified")
    if verified != "true" or not streamed:
        return _fail(f"streamed completion: x-tee-verified={verified!r}")
    print(f"deploy-check: streamed completion: x-tee-verified: true, {len(streamed)} characters",
          flush=True)

    _set_faults(args.simulator, {"tamper_response": True})
    try:
        client.chat.completions.create(model=args.model, messages=messages)
    except openai.APIStatusError as exc:
        error = exc.response.json().get("error", {})
        if exc.status_code != 502 or error.get("code") != TAMPER_CODE:
            return _fail(f"tampered completion: HTTP {exc.status_code} {error.get('code')!r}, "
                         f"expected 502 {TAMPER_CODE}")
        print(f"deploy-check: tampered completion blocked: HTTP 502 {error['code']}", flush=True)
    else:
        return _fail("tampered completion was delivered to the app")
    finally:
        _set_faults(args.simulator, {})
    print("deploy-check: ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
