"""A slide viewer in the browser: `python -m zoo.viewer --data-dir D --checkpoint outputs/<entry>/best.pt`.

FastAPI on uvicorn, read-only, bound to 127.0.0.1 by default. The page (frontend/static/) shows the cohort's
patients with their predictions, each patient's slides in OpenSeadragon (deep-zoom tiles from
`openslide.deepzoom.DeepZoomGenerator`) with the patch-attention heatmap and the ground-truth tumour mask as
overlays, the top-k patches, class probabilities, fusion attention, MRI slices and the clinical values.

Modules: `cohort` (ids -> files, from the cohort's own tables only), `slides` (deep zoom, overlays), `mri`
(axial slices), `inference` (per-patient predictions and attention from a checkpoint, cached in memory and on disk),
`triton_backend` (the same from a running Triton server; the one module of `zoo` allowed to import `triton_repo`,
lazily, see docs/ARCHITECTURE.md), `app` (the FastAPI app), `cli` (`python -m zoo.viewer`).
"""
