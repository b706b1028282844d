"""On-the-fly encoders in plain torch (``pip install 'nest-data[encode]'``).

Importing this package needs torch; the rest of nest-data does not.
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("nest_data.encoders needs torch: pip install 'nest-data[encode]' "
                      "(which pins torch==2.13.0)") from exc
