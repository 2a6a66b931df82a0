"""What a served entry carries for its clients: the export manifest inside the `<entry>` ensemble's config.

Build embeds the export's manifest.json, verbatim, as the string parameter `export_manifest` of the `<entry>`
ensemble's config.pbtxt, next to `export_manifest_sha256` (sha256 of its UTF-8 bytes). A client that knows only
the server's address lists the repository index, reads the ensemble's config through the model-config API,
checks the sha256 and takes tiling settings, clinical preprocessing and tensor names from it: no copy of the
model repository on the client's disk. Manifests are a few KiB; build refuses one over MAX_EMBEDDED_MANIFEST_BYTES
so a config stays far below gRPC's common 4 MiB message limit (Triton itself sets no limit on parameter strings).
"""
from __future__ import annotations

import hashlib
from typing import Any

from triton_repo import manifest as mf
from triton_repo.connection import ClientError, with_retries
from triton_repo.plan import SERVED_PARTS, SLIDE_SUFFIX

MANIFEST_PARAMETER = "export_manifest"
MANIFEST_SHA256_PARAMETER = "export_manifest_sha256"
MAX_EMBEDDED_MANIFEST_BYTES = 1 << 20


def manifest_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_parameters(text: str, where: str) -> dict[str, str]:
    """The config parameters carrying manifest `text`; refuses one too large to travel in a model config."""
    size = len(text.encode("utf-8"))
    if size > MAX_EMBEDDED_MANIFEST_BYTES:
        raise mf.ManifestError(f"{where}: {size} bytes, more than the {MAX_EMBEDDED_MANIFEST_BYTES} a served config "
                               "may carry (parameter export_manifest); is something large stored in it?")
    return {MANIFEST_PARAMETER: text, MANIFEST_SHA256_PARAMETER: manifest_sha256(text)}


def _parameter(config: Any, key: str) -> str | None:
    return config.parameters[key].string_value if key in config.parameters else None


def served_manifest_text(client: Any, model: str, url: str, retries: int = 0, backoff_s: float = 0.5) -> str:
    """The manifest JSON that `model`'s config carries, sha256-checked; ClientError when it carries none."""
    response = with_retries(lambda: client.get_model_config(model), retries, backoff_s,
                            f"model config of {model!r} at {url}")
    text = _parameter(response.config, MANIFEST_PARAMETER)
    expected = _parameter(response.config, MANIFEST_SHA256_PARAMETER)
    if text is None or expected is None:
        raise ClientError(f"model {model!r} at {url} carries no export manifest (config parameters "
                          f"{MANIFEST_PARAMETER}, {MANIFEST_SHA256_PARAMETER}): it is not an entry ensemble, or its "
                          "repository predates them; rebuild it with triton_repo.build or pass --repository")
    actual = manifest_sha256(text)
    if actual != expected:
        raise ClientError(f"model {model!r} at {url}: its export manifest has sha256 {actual}, but the config says "
                          f"{expected}; the config.pbtxt was edited after build, rebuild the repository")
    return text


def served_manifest(client: Any, model: str, url: str, retries: int = 0, backoff_s: float = 0.5) -> mf.ExportManifest:
    text = served_manifest_text(client, model, url, retries, backoff_s)
    manifest = mf.loads(text, f"export manifest served by {url} in model {model!r}", export_dir=f"triton/{model}")
    if manifest.entry != model:
        raise ClientError(f"model {model!r} at {url} carries the manifest of entry {manifest.entry!r}")
    return manifest


def _looks_like_part(name: str, ready: set[str]) -> bool:
    """`<entry>_<part>` / `<entry>_slide` models of an entry that is itself in the index."""
    for suffix in (*(f"_{p}" for p in SERVED_PARTS), SLIDE_SUFFIX):
        if name.endswith(suffix) and name[:-len(suffix)] in ready:
            return True
    return False


def served_entries(client: Any, url: str, retries: int = 0, backoff_s: float = 0.5) -> list[str]:
    """Names of the ready models at `url` whose config carries an export manifest (the entry ensembles)."""
    index = with_retries(lambda: client.get_model_repository_index(), retries, backoff_s,
                         f"repository index of {url}")
    ready = {m.name for m in index.models if m.state == "READY"}
    entries = []
    for name in sorted(ready):
        if _looks_like_part(name, ready):
            continue
        config = with_retries(lambda name=name: client.get_model_config(name), retries, backoff_s,
                              f"model config of {name!r} at {url}").config
        if MANIFEST_PARAMETER in config.parameters:
            entries.append(name)
    return entries


def pick_entry(entries: list[str], model: str | None, url: str) -> str:
    """`model` when given (and served), else the only served entry; a ClientError naming the choices otherwise."""
    if model is not None:
        if model not in entries:
            raise ClientError(f"model {model!r} is not an entry served at {url} (entries: {entries or 'none'})")
        return model
    if len(entries) != 1:
        raise ClientError(f"{url} serves {len(entries)} entries; pass --model (one of: {entries or 'none'})"
                          if entries else f"{url} serves no entry with an export manifest; is the repository "
                          "built with triton_repo.build (or pass --repository)?")
    return entries[0]
