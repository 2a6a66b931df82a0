"""Stream a slide's uint8 patches through the patch encoder in chunks, several requests in flight.

Only the features [N, D] float32 accumulate; at most `in_flight` chunks of patches are alive at a time, so the
client's memory does not grow with the number of patches. With `shared_memory=True` each in-flight slot is a
Triton system shared-memory region (co-located client and server): patches are not copied over gRPC.
"""
from __future__ import annotations

import os
import queue
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np
import tritonclient.grpc as grpcclient

from triton_repo.connection import with_retries
from triton_repo.manifest import ServedTensor


class SharedMemorySlots:
    """`count` system shared-memory regions registered with the server, lent out one chunk at a time."""

    def __init__(self, client: grpcclient.InferenceServerClient, count: int, byte_size: int):
        import tritonclient.utils.shared_memory as shm
        self._shm, self._client, self.byte_size = shm, client, byte_size
        self._free: queue.Queue = queue.Queue()
        self._regions = []
        tag = f"zoo_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        try:
            for i in range(count):
                name, key = f"{tag}_{i}", f"/{tag}_{i}"
                handle = shm.create_shared_memory_region(name, key, byte_size)
                self._regions.append((name, handle))
                client.register_system_shared_memory(name, key, byte_size)
                self._free.put((name, handle))
        except Exception:
            self.close()
            raise

    def acquire(self):
        return self._free.get()

    def release(self, slot) -> None:
        self._free.put(slot)

    def write(self, slot, array: np.ndarray) -> None:
        self._shm.set_shared_memory_region(slot[1], [np.ascontiguousarray(array)])

    def close(self) -> None:
        for name, handle in self._regions:
            try:
                self._client.unregister_system_shared_memory(name)
            finally:
                self._shm.destroy_shared_memory_region(handle)
        self._regions = []


class PatchStreamer:
    """Encode patch chunks with `<entry>_patch_encoder`; results come back in submission order."""

    def __init__(self, client: grpcclient.InferenceServerClient, model: str, patches: ServedTensor,
                 features: ServedTensor, chunk_size: int = 256, in_flight: int = 4, shared_memory: bool = False,
                 retries: int = 0, backoff_s: float = 0.5):
        if chunk_size < 1 or in_flight < 1:
            raise ValueError(f"chunk_size and in_flight must be >= 1 (got {chunk_size}, {in_flight})")
        self.client, self.model = client, model
        self.patches, self.features = patches, features
        self.chunk_size, self.in_flight = chunk_size, in_flight
        self.retries, self.backoff_s = retries, backoff_s
        item_bytes = int(np.prod(patches.shape[1:])) * patches.dtype.itemsize
        self._slots = SharedMemorySlots(client, in_flight, chunk_size * item_bytes) if shared_memory else None

    def _infer(self, chunk: np.ndarray) -> np.ndarray:
        inp = grpcclient.InferInput(self.patches.name, list(chunk.shape), "UINT8" if chunk.dtype == np.uint8 else
                                    grpcclient.np_to_triton_dtype(chunk.dtype))
        slot = None
        if self._slots is not None:
            slot = self._slots.acquire()
            self._slots.write(slot, chunk)
            inp.set_shared_memory(slot[0], chunk.nbytes)
        else:
            inp.set_data_from_numpy(chunk)
        out = grpcclient.InferRequestedOutput(self.features.name)
        try:
            result = with_retries(lambda: self.client.infer(self.model, [inp], outputs=[out]),
                                  self.retries, self.backoff_s, f"model {self.model}")
        finally:
            if slot is not None:
                self._slots.release(slot)
        return result.as_numpy(self.features.name)

    def chunks(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Re-cut arbitrary patch batches into chunks of at most `chunk_size`."""
        for batch in batches:
            batch = np.asarray(batch)
            if batch.dtype != self.patches.dtype or batch.ndim != len(self.patches.shape):
                raise ValueError(f"patches must be {self.patches.dtype} with shape {list(self.patches.shape)} "
                                 f"(-1 = any), got {batch.dtype} {list(batch.shape)}")
            for start in range(0, len(batch), self.chunk_size):
                yield batch[start:start + self.chunk_size]

    def encode(self, batches: Iterable[np.ndarray]) -> np.ndarray:
        """Features [N, D] float32 for all patches of `batches`, in order."""
        parts: list[np.ndarray] = []
        pending: deque[Future] = deque()
        with ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="patch-encoder") as pool:
            for chunk in self.chunks(batches):
                if len(chunk) == 0:
                    continue
                if len(pending) >= self.in_flight:
                    parts.append(pending.popleft().result())
                pending.append(pool.submit(self._infer, chunk))
            while pending:
                parts.append(pending.popleft().result())
        if not parts:
            return np.zeros((0, self.features.shape[-1]), dtype=np.float32)
        return np.concatenate(parts)

    def close(self) -> None:
        if self._slots is not None:
            self._slots.close()
            self._slots = None
