"""Key resolution: a user's spelling of catalog keys to one model, entry or location."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nest_data import _config
from nest_data._catalog.schema import KEYS, MODEL_KEYS, Location, ModelSpec, Root
from nest_data.errors import AmbiguousKeyError, LocationError, UnknownKeyError


def fmt(values: Iterable[Any]) -> str:
    """Values as a comma-separated list, for messages."""
    return ", ".join(str(v) for v in values)


def matches(value: Any, valid: Sequence[Any]) -> bool:
    """Whether ``value`` is one of ``valid``, ignoring case."""
    return str(value).lower() in {str(v).lower() for v in valid}


def normalise(key: str, value: Any, valid: Sequence[Any], context: str) -> Any:
    """Map a user's spelling of a key value to the canonical one, or raise UnknownKeyError."""
    if key == "subject":
        text = str(value).strip().lower().removeprefix("sub-").removeprefix("subject-")
        if text.isdigit() and int(text) in valid:
            return int(text)
    elif value in valid:
        return value
    else:
        folded = {str(v).lower(): v for v in valid}
        if str(value).lower() in folded:
            return folded[str(value).lower()]
    suggestion = "" if key == "subject" else did_you_mean(value, valid)
    raise UnknownKeyError(f"unknown {key} {value!r}{context}; valid {key} values: "
                          f"{fmt(valid)}.{suggestion}")


def did_you_mean(value: Any, valid: Iterable[Any]) -> str:
    """`` Did you mean 'x'?`` for the closest valid value (case-insensitive), or ``""``.

    Examples
    --------
    >>> did_you_mean("thing", ["imagenet_val", "nsd", "things"])
    " Did you mean 'things'?"
    >>> did_you_mean("ffa1", ["V1", "FFA-1"])
    " Did you mean 'FFA-1'?"
    """
    folded = {str(v).lower(): str(v) for v in valid}
    close = difflib.get_close_matches(str(value).lower(), list(folded), n=1)
    return f" Did you mean {folded[close[0]]!r}?" if close else ""


def resolve_model(models: Sequence[ModelSpec], keys: Mapping[str, Any], *, need_imageset: bool
                  ) -> tuple[ModelSpec, str | None, int, str | None]:
    """The one model, image set, subject and ROI that the keys name, in canonical spelling.

    ``modality``, ``train_dataset`` and ``model`` are inferred where only one model fits;
    among models that share an ROI, the catalog's ``default`` one wins unless one is named.
    """
    unknown = set(keys) - set(KEYS)
    if unknown:
        raise UnknownKeyError(f"unknown catalog key(s) {sorted(unknown)}; valid keys: "
                              f"{', '.join(KEYS)}")
    given = {k: v for k, v in keys.items() if v is not None}
    for k in ("imageset", "subject") if need_imageset else ("subject",):
        if k not in given:
            values = {v for m in models for v in getattr(m, f"{k}s")}
            raise AmbiguousKeyError(f"{k}= is required; valid values: {fmt(sorted(values))}")
    fitting = list(models)
    for k in MODEL_KEYS:
        if k in given:
            given[k] = normalise(k, given[k], sorted({getattr(m, k) for m in fitting}), "")
            fitting = [m for m in fitting if getattr(m, k) == given[k]]
    if not fitting:
        raise UnknownKeyError("no model matches " + ", ".join(
            f"{k}={given[k]!r}" for k in MODEL_KEYS if k in given) + "; valid models: " +
            fmt([m.name for m in models]))
    with_imageset = [m for m in fitting if "imageset" not in given
                     or matches(given["imageset"], m.imagesets)]
    if not with_imageset:
        valid = sorted({i for m in fitting for i in m.imagesets})
        raise UnknownKeyError(
            f"unknown imageset {given['imageset']!r} for " + fmt(m.name for m in fitting) +
            f"; valid imageset values: {fmt(valid)}.{did_you_mean(given['imageset'], valid)}")
    fitting = with_imageset
    named = any(k in given for k in ("train_dataset", "model"))
    if "roi" in given:
        fitting = _models_for_roi(fitting, given["roi"], named)
    else:
        fitting = _models_without_roi(fitting, given)
    if len(fitting) > 1:
        raise AmbiguousKeyError("the keys match several models: " +
                                fmt([m.name for m in fitting]) +
                                "; pass modality=, train_dataset= or model= to choose one")
    m = fitting[0]
    context = f" for {m.name}"
    imageset = (normalise("imageset", given["imageset"], list(m.imagesets), context)
                if "imageset" in given else None)
    subject = normalise("subject", given["subject"], list(m.subjects), context)
    roi = (normalise("roi", given["roi"], list(m.rois), context)
           if m.rois and "roi" in given else None)
    return m, imageset, subject, roi


def _models_for_roi(models: list[ModelSpec], roi: Any, named: bool) -> list[ModelSpec]:
    """The models an ROI can belong to: those that have it, the default one if several."""
    with_roi = [m for m in models if m.rois]
    if not with_roi:
        raise UnknownKeyError(f"roi={roi!r} given, but the selected model has no ROIs (EEG "
                              "entries have none); drop roi=")
    fitting = [m for m in with_roi if matches(roi, m.rois)]
    if not fitting:
        context = " for " + fmt(m.name for m in with_roi)
        normalise("roi", roi, list(dict.fromkeys(r for m in with_roi for r in m.rois)), context)
    defaults = [m for m in fitting if m.default]
    if len(fitting) > 1 and not named and len(defaults) == 1:
        return defaults
    return fitting or with_roi


def _models_without_roi(models: list[ModelSpec], given: Mapping[str, Any]) -> list[ModelSpec]:
    """The models whose entries need no ROI (EEG; a surface model's whole surface)."""
    needing = [m for m in models if m.rois and not m.surface]
    optional = [m for m in models if m not in needing]
    if not optional:
        rois = sorted({r for m in models for r in m.rois})
        raise AmbiguousKeyError(f"roi= is required for {fmt([m.name for m in models])}; "
                                f"valid ROIs: {fmt(rois)}")
    surface = [m for m in optional if m.surface]
    if needing and (not any(k in given for k in MODEL_KEYS) or (
            surface and not any(k in given for k in ("train_dataset", "model")))):
        choices = ["roi= for an fMRI entry (valid ROIs: " +
                   fmt(sorted({r for m in needing for r in m.rois})) + ")"]
        if any(not m.rois for m in optional):
            choices.append("modality='eeg' for an EEG entry")
        if surface:
            choices.append("train_dataset=" + " / ".join(repr(m.train_dataset)
                                                         for m in surface) +
                           " for a whole cortical surface")
        raise AmbiguousKeyError("no roi= given: pass " + ", or ".join(choices))
    return optional


def resolve_location(locations: Mapping[str, Location], location: str | os.PathLike[str] | None,
                     storage_options: Mapping[str, Any] | None) -> Root:
    """A location name, folder or URL (or the environment's choice) as a :class:`Root`."""
    if location is not None and not isinstance(location, (str, os.PathLike)):
        raise LocationError(f"location={location!r} is not a name, folder or URL; give a "
                            "location name (" + fmt(sorted(locations)) + "), a "
                            "folder or an fsspec URL")
    name = os.fspath(location) if location is not None else None
    if name is None:
        name = os.environ.get(_config.ENV_LOCATION) or None
    if name is None and os.environ.get(_config.ENV_ROOT) and "local" in locations:
        name = "local"
    if name is None:
        raise LocationError(
            "no location given: pass location= (one of " + fmt(sorted(locations)) +
            ", a folder, or a URL), or set NEST_DATA_ROOT to the folder that holds your "
            "stores, or NEST_DATA_LOCATION to a location name. To try nest-data without "
            "data, run `nest-data demo` and use location='demo'."
        )
    extra = dict(storage_options or {})
    if name in locations:
        loc = locations[name]
        return Root(loc.resolve(), {**loc.storage_options, **extra}, name)
    if "/" in name or "\\" in name or name.startswith(".") or os.path.isdir(name):
        return Root(name, extra, name)
    close = difflib.get_close_matches(name, sorted(locations), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise LocationError(f"unknown location {name!r}; valid locations: "
                        f"{fmt(sorted(locations))}, or any folder or fsspec URL."
                        f"{hint} Add one with Catalog.add_location() or a catalog YAML "
                        "'locations:' block.")
