"""Every uploaded file is deleted, whatever the answer (200, 404, 422, 500).

MONAI Label's /infer endpoints copy the upload to a temporary file and schedule its deletion as a background task
of the response. FastAPI runs a response's background tasks only after the endpoint has returned: every error answer
(an unknown bundle, an unreadable upload, failing weights) left the upload in the temporary folder, so any client
could fill the server's disk. `delete_uploads_on_error` wraps those endpoint functions: when they raise, the
deletions they scheduled (the upload, a label upload, and result files registered with `delete_after_request`) run
before the error answer goes out.
"""

from __future__ import annotations

import functools
import logging
from contextvars import ContextVar

from monailabel.utils.others.generic import remove_file

logger = logging.getLogger(__name__)

# the BackgroundTasks of the request being answered (the endpoint functions run in the request's own context)
_REQUEST_TASKS: ContextVar = ContextVar("visionfm_request_tasks", default=None)
_ENDPOINTS = (("monailabel.endpoints.infer", "run_inference"), ("monailabel.endpoints.wsi_infer", "run_wsi_inference"))


def delete_after_request(path: str | None) -> None:
    """Delete `path` once the current request has been answered, whatever the answer (nothing outside a request)."""
    tasks = _REQUEST_TASKS.get()
    if tasks is not None and path:
        tasks.add_task(remove_file, path)


def _delete_scheduled(background_tasks) -> None:
    for task in background_tasks.tasks:
        if task.func is remove_file:
            try:
                remove_file(*task.args, **task.kwargs)
            except OSError as e:  # the error answer still goes out
                logger.warning(f"could not delete {task.args}: {e}")


def delete_uploads_on_error(endpoint):
    """`endpoint(background_tasks, ...)`, running the file deletions it scheduled when it raises."""
    if getattr(endpoint, "deletes_uploads_on_error", False):
        return endpoint

    @functools.wraps(endpoint)
    def run(background_tasks, *args, **kwargs):
        token = _REQUEST_TASKS.set(background_tasks)
        try:
            return endpoint(background_tasks, *args, **kwargs)
        except BaseException:
            _delete_scheduled(background_tasks)
            raise
        finally:
            _REQUEST_TASKS.reset(token)

    run.deletes_uploads_on_error = True
    return run


def install() -> None:
    """Wrap MONAI Label's /infer and /infer/wsi_v2 endpoint functions (their routes look them up at each request)."""
    import importlib

    for module_name, name in _ENDPOINTS:
        module = importlib.import_module(module_name)
        setattr(module, name, delete_uploads_on_error(getattr(module, name)))
