"""A REST API over the run store: predictions, explanations and users' flags (FastAPI under uvicorn).

    python -m core serve --run RUN_ID --port 8000
    curl -F file=@image.png http://127.0.0.1:8000/predict

Models load once, in the app's lifespan (the runs named with ``--run``, else the newest complete run);
another complete run of the workspace is loaded on its first request and kept. TensorFlow work runs in
plain ``def`` endpoints (FastAPI's thread pool, off the event loop); explanation functions are compiled
once per (model, method, parameters) by `core.explain` and shared by every request. A bounded semaphore
limits how many explanations run at once, and uploads above a size limit are refused before decoding.
Every error a client can cause answers 4xx with ``{"detail": message}``; anything else answers a 500
with a one-line message, never a traceback.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from core import __version__, feedback, runs

log = logging.getLogger("core.serve")

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_CONCURRENT_EXPLANATIONS = 2
DEFAULT_QUEUE_TIMEOUT_S = 120.0
MAX_FILES = 64
CONFIG_ENV = "XAI_SERVE_CONFIG"  # JSON `ServeConfig` for the app factory (uvicorn workers)


@dataclass
class ServeConfig:
    """What `create_app` needs; ``python -m core serve`` fills it from its arguments."""

    workspace: str
    run_ids: list[str] = field(default_factory=list)
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_concurrent_explanations: int = DEFAULT_MAX_CONCURRENT_EXPLANATIONS
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S


class ModelStore:
    """Loaded models by run id; a run is loaded once, under its own lock (two first requests load it once)."""

    def __init__(self, workspace: Path):
        self.workspace = workspace
        self._models: dict[str, tuple[runs.Run, Any]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> list[str]:
        return list(self._models)

    def run(self, run_id: str) -> runs.Run:
        if not run_id or Path(run_id).name != run_id or run_id.startswith("."):  # ids only, never a path
            raise HTTPException(404, f"Unknown run: expected a run id (a folder name). Received: {run_id!r}")
        try:
            run = runs.find_run(self.workspace, run_id)
        except (runs.RunError, ValueError, OSError) as exc:
            raise HTTPException(404, f"Unknown run {run_id!r}: {exc}") from None
        if not run.is_complete:
            raise HTTPException(409, f"Run {run.id} is {run.status}, not complete: it has no model to serve.")
        return run

    def get(self, run_id: str) -> tuple[runs.Run, Any]:
        if run_id in self._models:
            return self._models[run_id]
        run = self.run(run_id)
        with self._lock:
            lock = self._locks.setdefault(run.id, threading.Lock())
        with lock:
            if run.id not in self._models:
                from core.model_import import load_run_model

                try:
                    model = load_run_model(run.path)
                except (ValueError, OSError) as exc:
                    raise HTTPException(409, f"The model of run {run.id} cannot be loaded: {exc}") from None
                self._models[run.id] = (run, model)
        return self._models[run.id]


# ---- helpers -------------------------------------------------------------------------------------


def _read_upload(upload: UploadFile, limit: int) -> bytes:
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{upload.filename or 'The upload'} is larger than the limit of {limit:,} bytes.")
    if not data:
        raise HTTPException(400, f"{upload.filename or 'The upload'} is empty (0 bytes).")
    return data


def _decode(data: bytes, size: tuple[int, int], filename: str | None) -> np.ndarray:
    from core.data import ImageError, load_image

    try:
        return load_image(data, size)
    except ImageError as exc:
        status = 413 if "too large" in str(exc) else 400
        raise HTTPException(status, f"{filename or 'The upload'}: {exc}") from None


def _class_index(value: str | None, class_names: list[str]) -> int | None:
    if value is None or value == "":
        return None
    if value in class_names:
        return class_names.index(value)
    if value.isascii() and value.isdecimal() and int(value) < len(class_names):  # "2"; not "²", "-1" or "٣"
        return int(value)
    raise HTTPException(
        400, f"Unknown class. Expected one of {class_names} or an index 0-{len(class_names) - 1}. Received: {value!r}"
    )


MAX_PARAMS_CHARS = 10_000


def _finite(text: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _not_a_number(text: str):
    raise ValueError(f"{text} is not a number")


def _parse_params(text: str | None) -> dict:
    """A JSON object of finite numbers, strings, booleans, nulls and lists (the ``params`` form field); a 400
    for anything else, before anything is computed or stored."""
    if not text:
        return {}
    if len(text) > MAX_PARAMS_CHARS:
        raise HTTPException(400, f"Expected params as a JSON object of at most {MAX_PARAMS_CHARS:,} characters.")
    try:
        params = json.loads(text, parse_float=_finite, parse_constant=_not_a_number)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(":")[0]
        raise HTTPException(400, f"Expected params as a JSON object ({reason}). Received: {text[:200]!r}") from None
    if not isinstance(params, dict):
        raise HTTPException(400, f"Expected params as a JSON object. Received: {text[:200]!r}")
    return params


def check_params(method: str, params: dict, size: tuple[int, int]) -> dict:
    """Checks ``params`` against `core.explain.describe` (names, kinds, bounds, choices); raises a 400."""
    from core.explain import METHODS, describe

    if method not in METHODS:
        raise HTTPException(400, f"Unknown method. Expected one of {list(METHODS)}. Received: {method!r}")
    spec = describe(method, size)["params"]
    for name, value in params.items():
        if name not in spec:
            raise HTTPException(400, f"{method}: unknown parameter. Expected among {sorted(spec)}. Received: {name!r}")
        entry = spec[name]
        if value is None and entry.get("nullable"):
            continue
        kind = entry["kind"]
        bad = (
            (kind == "int" and (isinstance(value, bool) or not isinstance(value, int)))
            or (kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))))
            or (kind == "bool" and not isinstance(value, bool))
            or (kind in ("choice",) and value not in entry["choices"])
            or (kind == "layer" and not isinstance(value, str))
        )
        if bad:
            expected = {"choice": f"one of {entry['choices']}", "layer": "a layer name"}.get(kind, f"a {kind}")
            raise HTTPException(400, f"{method}: expected {name} to be {expected}. Received: {value!r}")
        if kind in ("int", "float"):
            low, high = entry.get("minimum"), entry.get("maximum")
            if (low is not None and value < low) or (high is not None and value > high):
                raise HTTPException(400, f"{method}: expected {name} in [{low}, {high}]. Received: {value!r}")
    return params


def _probabilities(class_names: list[str], probs: np.ndarray) -> dict[str, float]:
    return {name: round(float(p), 6) for name, p in zip(class_names, probs, strict=False)}


def _predicted(run: runs.Run, probs: np.ndarray) -> int:
    """The predicted class: under the decision threshold saved with the run (Evaluation page), else argmax."""
    from core.explorer import predicted_index

    return int(predicted_index(run, probs)[0])


def _answer(run: runs.Run, probs: np.ndarray, size, started: float, filename: str | None) -> dict:
    names = run.class_names
    return {
        "run_id": run.id,
        "filename": filename,
        "predicted_class": names[_predicted(run, probs)],
        "probabilities": _probabilities(names, probs),
        "input_size": list(size),
        "milliseconds": round((time.perf_counter() - started) * 1000, 2),
    }


def _only_fields(*names: str):
    """A route dependency: 400 for a form field the route does not read (``class_name`` for ``class``, say),
    instead of silently answering with the defaults."""
    allowed = set(names)

    async def check(request: Request) -> None:
        if not request.headers.get("content-type", "").startswith(("multipart/form-data", "application/x-www-form")):
            return
        unknown = sorted(set((await request.form()).keys()) - allowed)
        if unknown:
            raise HTTPException(400, f"Unknown form field(s) {unknown}. Expected some of {sorted(allowed)}.")

    return Depends(check)


def _default_run(store: ModelStore, run: str | None) -> str:
    if run:
        return run
    if store.loaded:
        return store.loaded[0]
    raise HTTPException(404, "No run is loaded and none was asked for: pass run=RUN_ID.")


# ---- the app -------------------------------------------------------------------------------------


def create_app(config: ServeConfig) -> FastAPI:
    """The FastAPI app serving the workspace's runs (see the module docstring)."""
    workspace = Path(config.workspace)
    store = ModelStore(workspace)
    explain_slots = threading.BoundedSemaphore(max(1, int(config.max_concurrent_explanations)))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ids = list(config.run_ids)
        if not ids:
            latest = runs.latest_complete_run(workspace)
            ids = [latest.id] if latest else []
        for run_id in ids:
            try:
                store.get(run_id)
            except HTTPException as exc:  # stops start-up with the reason
                raise RuntimeError(exc.detail) from None
            log.info("Loaded run %s", run_id)
        yield

    app = FastAPI(
        title="XAI dashboard API",
        version=__version__,
        description="Predictions, explanations and feedback flags for the runs of an XAI dashboard workspace.",
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.store = store

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        limit = config.max_upload_bytes * MAX_FILES + 1024 * 1024 if "/predict" in request.url.path else None
        limit = limit or config.max_upload_bytes + 1024 * 1024
        if length and length.isdigit() and int(length) > limit:
            return JSONResponse({"detail": f"The request body ({int(length):,} bytes) is over {limit:,}."}, 413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"detail": f"Invalid request: {problems}"}, 422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.error("Unexpected error on %s: %s: %s", request.url.path, type(exc).__name__, exc)
        return JSONResponse({"detail": f"Internal error ({type(exc).__name__}); see the server log."}, 500)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__, "runs_loaded": store.loaded}

    @app.get("/runs")
    def list_runs() -> list[dict]:
        """Complete runs of the workspace: id, name, classes, input size and test metrics."""
        return [
            {
                "id": run.id,
                "name": run.meta.get("name"),
                "architecture": run.meta.get("architecture"),
                "classes": run.class_names,
                "input_size": run.meta.get("input_size"),
                "metrics": {k: run.meta.get(k) for k in ("test_accuracy", "roc_auc_macro")},
                "loaded": run.id in store.loaded,
            }
            for run in runs.list_runs(workspace)
            if run.is_complete
        ]

    @app.post("/predict", dependencies=[_only_fields("file", "files", "run")])
    def predict(
        file: Annotated[UploadFile | None, File(description="one image")] = None,
        files: Annotated[list[UploadFile] | None, File(description="several images")] = None,
        run: Annotated[str | None, Form(description="run id (default: the first loaded run)")] = None,
    ):
        """Class probabilities of one image (field ``file``: one answer) or several (``files``: a list)."""
        from core.models import input_size, predict_proba

        uploads = ([file] if file is not None else []) + list(files or [])
        if not uploads:
            raise HTTPException(400, "Expected an image in the multipart field 'file' (or several in 'files').")
        if len(uploads) > MAX_FILES:
            raise HTTPException(413, f"Expected at most {MAX_FILES} images per request. Received {len(uploads)}.")
        started = time.perf_counter()
        run_obj, model = store.get(_default_run(store, run))
        size = input_size(model)
        images = [_decode(_read_upload(u, config.max_upload_bytes), size, u.filename) for u in uploads]
        probs = predict_proba(model, np.stack(images))
        answers = [_answer(run_obj, p, size, started, u.filename) for p, u in zip(probs, uploads, strict=True)]
        return answers[0] if file is not None and not files else answers

    @app.post(
        "/explain",
        dependencies=[_only_fields("file", "method", "params", "class", "raw", "alpha", "colormap", "run")],
    )
    def explain(
        file: Annotated[UploadFile, File(description="one image")],
        method: Annotated[str, Form()] = "gradcam",
        params: Annotated[str | None, Form(description='JSON object, e.g. {"patch_size": 8}')] = None,
        class_name: Annotated[str | None, Form(alias="class", description="class name or index")] = None,
        raw: Annotated[bool, Form(description="also return the map as nested lists H x W")] = False,
        alpha: Annotated[float, Form(ge=0.0, le=1.0)] = 0.5,
        colormap: Annotated[str, Form()] = "jet",
        run: Annotated[str | None, Form()] = None,
    ):
        """The prediction and an explanation map of one image: a PNG overlay (base64) and, with raw=true, the map."""
        from core.explain import ExplanationError
        from core.explain import explain as explain_images
        from core.models import input_size, predict_proba
        from core.visualize import COLORMAPS, overlay, png_bytes

        started = time.perf_counter()
        if colormap not in COLORMAPS:
            raise HTTPException(400, f"Unknown colormap. Expected one of {list(COLORMAPS)}. Received: {colormap!r}")
        run_obj, model = store.get(_default_run(store, run))
        size = input_size(model)
        options = check_params(method, _parse_params(params), size)
        index = _class_index(class_name, run_obj.class_names)
        image = _decode(_read_upload(file, config.max_upload_bytes), size, file.filename)
        probs = predict_proba(model, image[None])[0]
        explained = index if index is not None else _predicted(run_obj, probs)
        predicted_ms = (time.perf_counter() - started) * 1000
        if not explain_slots.acquire(timeout=config.queue_timeout_s):
            raise HTTPException(503, f"Every explanation slot stayed busy for {config.queue_timeout_s:.0f} s; retry.")
        try:
            explain_started = time.perf_counter()
            saliency = explain_images(model, image[None], method, class_index=explained, **options)[0]
            explain_ms = (time.perf_counter() - explain_started) * 1000
        except ExplanationError as exc:
            raise HTTPException(400, str(exc)) from None
        finally:
            explain_slots.release()
        answer = _answer(run_obj, probs, size, started, file.filename)
        answer.update(
            method=method,
            params=options,
            explained_class=run_obj.class_names[explained],
            overlay_png=base64.b64encode(png_bytes(overlay(image, saliency, alpha, colormap))).decode("ascii"),
            timings={"predict_ms": round(predicted_ms, 2), "explain_ms": round(explain_ms, 2)},
        )
        if raw:
            answer["saliency"] = np.round(saliency.astype(float), 5).tolist()
        answer["milliseconds"] = round((time.perf_counter() - started) * 1000, 2)
        return answer

    @app.post(
        "/feedback",
        status_code=201,
        dependencies=[
            _only_fields("file", "flag_type", "correct_class", "comment", "method", "params", "explained_class", "run")
        ],
    )
    def post_feedback(
        file: Annotated[UploadFile, File(description="the flagged image")],
        flag_type: Annotated[str, Form(description=f"one of {list(feedback.FLAG_TYPES)}")],
        correct_class: Annotated[str | None, Form()] = None,
        comment: Annotated[str, Form(max_length=5000)] = "",
        method: Annotated[str | None, Form()] = None,
        params: Annotated[str | None, Form(description="JSON object")] = None,
        explained_class: Annotated[str | None, Form()] = None,
        run: Annotated[str | None, Form()] = None,
    ):
        """Stores a flag (wrong prediction, wrong label, implausible explanation, shortcut) with the image and
        the run's prediction for it (computed here, so the stored prediction is the model's own)."""
        from core.models import input_size, predict_proba

        if flag_type not in feedback.FLAG_TYPES:
            raise HTTPException(
                400, f"Unknown flag_type. Expected one of {list(feedback.FLAG_TYPES)}. Received: {flag_type!r}"
            )
        run_obj, model = store.get(_default_run(store, run))
        names = run_obj.class_names
        for label, value in (("correct_class", correct_class), ("explained_class", explained_class)):
            if value and value not in names:
                raise HTTPException(400, f"Unknown {label}. Expected one of {names}. Received: {value!r}")
        options = _parse_params(params)
        if method is not None:
            from core.explain import METHODS

            if method not in METHODS:
                raise HTTPException(400, f"Unknown method. Expected one of {list(METHODS)}. Received: {method!r}")
        data = _read_upload(file, config.max_upload_bytes)
        image = _decode(data, input_size(model), file.filename)
        probs = predict_proba(model, image[None])[0]
        try:
            flag_id = feedback.add_flag(
                workspace,
                data,
                flag_type=flag_type,
                run_id=run_obj.id,
                correct_class=correct_class or None,
                comment=comment,
                predicted_class=names[_predicted(run_obj, probs)],
                probabilities=_probabilities(names, probs),
                explained_class=explained_class,
                method=method,
                params=options,
                source="api",
            )
        except feedback.FeedbackError as exc:
            raise HTTPException(400, str(exc)) from None
        return feedback.get_flag(workspace, flag_id)

    @app.get("/feedback")
    def get_feedback(
        run: str | None = None, flag_type: str | None = None, correct_class: str | None = None, limit: int = 500
    ) -> list[dict]:
        """The stored flags, newest first, optionally filtered by run, flag type or correct class."""
        if not 1 <= limit <= 10_000:
            raise HTTPException(400, f"Expected limit in [1, 10000]. Received: {limit}")
        return feedback.list_flags(workspace, run_id=run, flag_type=flag_type, correct_class=correct_class, limit=limit)

    return app


def app_from_env() -> FastAPI:
    """The app factory uvicorn's workers call (``core.serve:app_from_env``); reads `CONFIG_ENV`."""
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Runs the API under uvicorn until interrupted (``workers`` > 1: one process per worker)."""
    import uvicorn

    os.environ[CONFIG_ENV] = json.dumps(config.__dict__)
    uvicorn.run(
        "core.serve:app_from_env", factory=True, host=host, port=port, workers=max(1, workers), log_level="info"
    )
