"""Computing dask collections with a tqdm progress bar, locally or on a distributed cluster."""

from __future__ import annotations

from typing import Any

import dask
from dask.base import get_scheduler
from tqdm.auto import tqdm
from tqdm.dask import TqdmCallback

from nest_data import _config

__all__ = ["active_client", "compute"]


def active_client() -> Any:
    """The ``distributed.Client`` that ``dask.compute`` would use now, or None."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    scheduler = get_scheduler()
    return client if scheduler is not None and scheduler == client.get else None


def compute(*objects: Any, desc: str = "computing", client: Any = None, **local: Any
            ) -> tuple[Any, ...]:
    """``dask.compute`` with a tqdm progress bar, when :func:`nest_data._config.show_progress`.

    Runs on ``client`` if given, else on the active ``distributed.Client`` (the bar then
    counts the output chunks finished on the cluster), else on the local scheduler with
    the keyword arguments ``local`` (the bar counts tasks).  A task's error is raised here.
    """
    client = client if client is not None else active_client()
    show = _config.show_progress()
    if client is not None:
        from distributed import as_completed, futures_of

        persisted = client.persist(list(objects))
        futures = futures_of(persisted)
        with tqdm(total=len(futures), desc=desc, unit="chunk", disable=not show) as bar:
            for future in as_completed(futures):
                if future.status == "error":
                    future.result()  # raises the task's exception
                bar.update()
        return tuple(client.compute(persisted, sync=True))
    if not show:
        return tuple(dask.compute(*objects, **local))
    with TqdmCallback(desc=desc, unit="task"):
        return tuple(dask.compute(*objects, **local))
