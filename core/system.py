"""Library versions and the compute device, answered without importing TensorFlow where possible."""

from __future__ import annotations

import sys
from importlib import metadata

LIBRARIES = (
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "tf-explain",
    "numpy",
    "pandas",
    "scikit-learn",
    "pillow",
    "streamlit",
    "plotly",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries the runs depend on (missing ones are left out)."""
    versions = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def tensorflow_version() -> str | None:
    versions = library_versions()
    return versions.get("tensorflow") or versions.get("tensorflow-cpu")


def device_in_use() -> str:
    """'GPU (name, ...)' or 'CPU'. Asks TensorFlow only if it is already imported in this process;
    otherwise tells from the installed build whether a GPU could be used at all."""
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        gpus = tf.config.list_physical_devices("GPU")
        return f"GPU ({', '.join(g.name for g in gpus)})" if gpus else "CPU"
    versions = library_versions()
    if "tensorflow" not in versions and "tensorflow-cpu" in versions:
        return "CPU (tensorflow-cpu build)"
    import os

    return "GPU (NVIDIA driver found)" if os.path.exists("/proc/driver/nvidia/version") else "CPU"
