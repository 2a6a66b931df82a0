"""gRPC connection to Triton with retries: transient failures back off and retry, request errors do not."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

T = TypeVar("T")
# Status codes worth another try: the server is (re)starting or briefly overloaded.
TRANSIENT = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED"}


class ClientError(RuntimeError):
    """A request failed; the message names the server, the model and what to do."""


def with_retries(call: Callable[[], T], retries: int, backoff_s: float, what: str) -> T:
    """Run `call`; on a transient error retry up to `retries` times, waiting backoff_s * 2**attempt."""
    for attempt in range(retries + 1):
        try:
            return call()
        except InferenceServerException as err:
            if str(err.status()) not in TRANSIENT or attempt == retries:
                raise ClientError(f"{what}: [{err.status()}] {err.message()}") from err
        time.sleep(backoff_s * 2 ** attempt)
    raise AssertionError("unreachable")


def connect(url: str, retries: int = 0, backoff_s: float = 0.5) -> grpcclient.InferenceServerClient:
    """A client for `url` whose server answered `is_server_ready`; a clear error when nobody answers."""
    client = grpcclient.InferenceServerClient(url=url)

    def ready() -> bool:
        if not client.is_server_ready():
            raise InferenceServerException("server is not ready", status="StatusCode.UNAVAILABLE")
        return True
    try:
        with_retries(ready, retries, backoff_s, f"Triton at {url}")
    except ClientError as err:
        client.close()
        raise ClientError(f"{err}; is the server running? start it with `python -m triton_repo.serve` "
                          f"(and pass --url host:grpc_port)") from None
    return client
