"""The viewer's FastAPI app: the page, OpenSeadragon from node_modules, and a read-only JSON/image API.

Every id in a URL is looked up in the cohort's own tables (zoo.viewer.cohort): an unknown id, or one with `..`,
`/` or any character a file name of the cohort cannot have, is a 404 with a message; no request reads a file the
cohort does not list.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from zoo.viewer.cohort import Cohort, UnknownId
from zoo.viewer.inference import Backend, PredictionError, Predictions
from zoo.viewer.mri import MriStore, MriUnreadable
from zoo.viewer.slides import COLORMAP, SlideStore, SlideUnreadable, TileNotFound, colormap_stops

FRONTEND = Path(__file__).resolve().parent / "frontend"
STATIC = FRONTEND / "static"
OSD_BUILD = FRONTEND / "node_modules" / "openseadragon" / "build" / "openseadragon"
OSD_MISSING = (f"OpenSeadragon is not installed: run `npm ci --prefix {FRONTEND.relative_to(FRONTEND.parents[2])}` "
               "(Node 18+; it installs the version pinned in package-lock.json) and restart the viewer")
TILE_CACHE = {"Cache-Control": "public, max-age=3600"}
DEFAULT_TOP_K = 12
MAX_TOP_K = 64


def openseadragon_installed() -> bool:
    return (OSD_BUILD / "openseadragon.min.js").is_file()


class ViewerState:
    def __init__(self, cohort: Cohort, backend: Backend, cache_dir: str | Path | None):
        self.cohort, self.backend = cohort, backend
        self.slides = SlideStore(cohort)
        self.mri = MriStore()
        self.predictions = Predictions(backend, cohort, self.slides, cache_dir)
        self._images: dict[tuple[str, str], tuple[bytes, dict[str, Any]] | None] = {}
        self._lock = threading.Lock()

    def image(self, kind: str, slide_id: str, make):
        key = (kind, slide_id)
        with self._lock:
            if key in self._images:
                return self._images[key]
        value = make()
        with self._lock:
            self._images[key] = value
        return value

    # -- JSON ---------------------------------------------------------------------------------------------------
    def summary(self, pid: str) -> dict[str, Any]:
        patient = self.cohort.patients[pid]
        rec, err = self.predictions.peek(pid), self.predictions.error(pid)
        row: dict[str, Any] = {"patient_id": pid, "split": patient.split, "label": patient.label_name,
                               "num_slides": len(patient.slides), "mri": sorted(patient.mri),
                               "status": "ok" if rec else ("error" if err else "pending"),
                               "predicted": None, "probability": None, "correct": None}
        if rec:
            row["predicted"] = rec["predicted"]
            row["probability"] = rec["probabilities"][rec["predicted"]]
            row["correct"] = None if patient.label_name is None else rec["predicted"] == patient.label_name
        if err:
            row["error"] = err
        return row

    def slide_entry(self, slide_id: str, rec: dict[str, Any] | None) -> dict[str, Any]:
        record = self.cohort.slides[slide_id]
        entry: dict[str, Any] = {"slide_id": slide_id, "dzi": f"/api/slides/{slide_id}.dzi", "error": None,
                                 "mask": None, "heatmap": None, "heatmap_missing": None}
        try:
            info = self.slides.info(slide_id)
        except SlideUnreadable as exc:
            entry["error"] = str(exc)
            return entry
        entry["info"] = info
        width, height = info["width"], info["height"]
        if record.mask_png is not None:
            overlay = self.image("mask", slide_id, lambda: self.slides.mask_overlay(slide_id))
            if overlay is not None:
                meta = overlay[1]
                entry["mask"] = {"url": f"/api/slides/{slide_id}/mask.png",
                                 "width_fraction": meta["width"] * meta["downsample"] / width}
        if rec is None:
            entry["heatmap_missing"] = "no prediction for this patient"
        elif "pathology" not in rec["modalities"]:
            entry["heatmap_missing"] = f"the model ({self.backend.entry}) does not use pathology"
        elif slide_id in rec["skipped_slides"]:
            entry["heatmap_missing"] = f"left out of the prediction: {rec['skipped_slides'][slide_id]}"
        elif slide_id not in rec["slides"]:
            entry["heatmap_missing"] = "no patches of this slide in the prediction"
        else:
            s = rec["slides"][slide_id]
            downsample, w, _ = SlideStore.heatmap_downsample(width, height)
            entry["heatmap"] = {"url": f"/api/slides/{slide_id}/heatmap.png", "width_fraction": w * downsample / width,
                                "min": min(s["attention"]), "max": max(s["attention"]),
                                "num_patches": len(s["attention"]), "patch_size_level0": s["patch_size_level0"]}
        return entry

    def top_patches(self, rec: dict[str, Any], k: int) -> list[dict[str, Any]]:
        flat = [(w, sid, xy, s["patch_size_level0"]) for sid, s in rec["slides"].items()
                for xy, w in zip(s["coords"], s["attention"])]
        flat.sort(key=lambda t: -t[0])
        return [{"rank": i, "slide_id": sid, "x": int(xy[0]), "y": int(xy[1]), "size": int(size),
                 "attention": float(w), "url": f"/api/patients/{rec['patient_id']}/top/{i}.jpeg?k={k}"}
                for i, (w, sid, xy, size) in enumerate(flat[:k])]

    def detail(self, pid: str, k: int) -> dict[str, Any]:
        patient = self.cohort.patient(pid)
        pid = patient.patient_id
        rec, error = None, None
        try:
            rec = self.predictions.get(pid)
        except PredictionError as exc:
            error = str(exc)
        modalities = list(self.backend.modalities)
        missing: list[str] = []
        if not patient.slides:
            missing.append("pathology: no slide of this patient in wsi_raw")
        if not patient.mri:
            missing.append("MRI: no volume of this patient in mri_raw")
        if rec is not None:
            for m in modalities:
                if not rec["presence"].get(m, False):
                    missing.append(f"{m}: missing for this patient, so the model predicted without it")
        for m in ("pathology", "mri", "clinical"):
            if m not in modalities:
                missing.append(f"{m}: not used by this model ({self.backend.entry})")
        prediction: dict[str, Any] = {"status": "error", "error": error}
        if rec is not None:
            prediction = {"status": "ok", "probabilities": rec["probabilities"], "predicted": rec["predicted"],
                          "correct": None if patient.label_name is None else rec["predicted"] == patient.label_name,
                          "fusion_attention": rec["fusion_attention"], "presence": rec["presence"],
                          "skipped_slides": rec["skipped_slides"], "num_patches": rec["num_patches"],
                          "compute_s": rec.get("compute_s")}
        mri = {}
        for seq, path in patient.mri.items():
            try:
                mri[seq] = {**self.mri.info(path), "url": f"/api/patients/{pid}/mri/{seq}/"}
            except MriUnreadable as exc:
                mri[seq] = {"error": str(exc)}
        return {"patient_id": pid, "split": patient.split, "label": patient.label_name, "clinical": patient.clinical,
                "modalities": modalities, "prediction": prediction, "missing": missing,
                "slides": [self.slide_entry(sid, rec) for sid in patient.slides],
                "top_patches": self.top_patches(rec, k) if rec is not None else [], "mri": mri}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def create_app(cohort: Cohort, backend: Backend, cache_dir: str | Path | None = None,
               warm: bool = True) -> FastAPI:
    state = ViewerState(cohort, backend, cache_dir)
    app = FastAPI(title="breast-fusion-zoo viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.viewer = state

    def answer(status: int):
        async def handler(_request: Request, exc: Exception):
            return _error(status, str(exc))
        return handler

    # Unknown ids and tiles are the client's mistake (404); a file that will not open or predict is ours (500).
    for error, status in ((UnknownId, 404), (TileNotFound, 404), (SlideUnreadable, 500), (MriUnreadable, 500),
                          (PredictionError, 500)):
        app.add_exception_handler(error, answer(status))

    @app.on_event("startup")
    def _start() -> None:
        if warm:
            state.predictions.warm(sorted(cohort.patients))

    @app.on_event("shutdown")
    def _stop() -> None:
        state.predictions.stop()
        state.slides.close()

    # -- page --------------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if openseadragon_installed():
        app.mount("/vendor/openseadragon", StaticFiles(directory=OSD_BUILD), name="openseadragon")
    else:
        @app.get("/vendor/openseadragon/{rest:path}", include_in_schema=False)
        def osd_missing(rest: str):
            return Response(OSD_MISSING, status_code=503, media_type="text/plain")

    # -- API ---------------------------------------------------------------------------------------------------
    @app.get("/api/info")
    def info():
        return {**backend.describe(), "data_dir": str(cohort.data_dir), "num_patients": len(cohort.patients),
                "num_slides": len(cohort.slides), "colormap": {"name": COLORMAP, "stops": colormap_stops()},
                "openseadragon": openseadragon_installed(), "openseadragon_missing": None
                if openseadragon_installed() else OSD_MISSING}

    @app.get("/api/patients")
    def patients():
        rows = [state.summary(pid) for pid in sorted(cohort.patients)]
        return {"patients": rows, "pending": sum(r["status"] == "pending" for r in rows),
                "class_names": list(backend.class_names)}

    @app.get("/api/patients/{patient_id}")
    def patient(patient_id: str, k: int = Query(DEFAULT_TOP_K, ge=1, le=MAX_TOP_K)):
        return state.detail(patient_id, k)

    @app.get("/api/patients/{patient_id}/top/{rank}.jpeg")
    def top_patch(patient_id: str, rank: int, k: int = Query(DEFAULT_TOP_K, ge=1, le=MAX_TOP_K)):
        pid = cohort.patient(patient_id).patient_id
        top = state.top_patches(state.predictions.get(pid), k)
        if not 0 <= rank < len(top):
            raise UnknownId(f"patient {pid!r} has {len(top)} top patch(es); rank {rank} is not one of them")
        p = top[rank]
        return Response(state.slides.region(p["slide_id"], p["x"], p["y"], p["size"]), media_type="image/jpeg",
                        headers=TILE_CACHE)

    @app.get("/api/patients/{patient_id}/mri/{sequence}/{index}.png")
    def mri_slice(patient_id: str, sequence: str, index: int):
        path = cohort.mri(patient_id, sequence)
        try:
            data = state.mri.slice_png(path, index)
        except IndexError as exc:
            raise UnknownId(f"patient {patient_id!r} {sequence}: {exc}") from None
        return Response(data, media_type="image/png", headers=TILE_CACHE)

    @app.get("/api/slides/{slide_id}.dzi")
    def dzi(slide_id: str):
        return Response(state.slides.dzi(cohort.slide(slide_id).slide_id), media_type="application/xml")

    @app.get("/api/slides/{slide_id}_files/{level:int}/{col:int}_{row:int}.jpeg")
    def tile(slide_id: str, level: int, col: int, row: int):
        data = state.slides.tile(cohort.slide(slide_id).slide_id, level, col, row)
        return Response(data, media_type="image/jpeg", headers=TILE_CACHE)

    @app.get("/api/slides/{slide_id}/mask.png")
    def mask(slide_id: str):
        sid = cohort.slide(slide_id).slide_id
        overlay = state.image("mask", sid, lambda: state.slides.mask_overlay(sid))
        if overlay is None:
            raise UnknownId(f"slide {sid!r} has no ground-truth tumour mask in {cohort.data_dir}/wsi_masks")
        return Response(overlay[0], media_type="image/png", headers=TILE_CACHE)

    @app.get("/api/slides/{slide_id}/heatmap.png")
    def heatmap(slide_id: str):
        record = cohort.slide(slide_id)
        rec = state.predictions.get(record.patient_id)
        if record.slide_id not in rec["slides"]:
            reason = rec["skipped_slides"].get(record.slide_id) or "no patches of it in the prediction"
            raise UnknownId(f"slide {record.slide_id!r} has no attention heatmap: {reason}")

        def make():
            info = state.slides.info(record.slide_id)
            s = rec["slides"][record.slide_id]
            return state.slides.heatmap_overlay(info["width"], info["height"], s["coords"], s["attention"],
                                                float(s["patch_size_level0"]))

        return Response(state.image("heatmap", record.slide_id, make)[0], media_type="image/png",
                        headers=TILE_CACHE)

    @app.get("/api/{rest:path}", include_in_schema=False)
    def unknown_api(rest: str):
        return _error(404, f"unknown API path /api/{rest}")

    return app
