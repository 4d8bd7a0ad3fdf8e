"""Core logic of the XAI dashboard: data, models, runs, training, evaluation, explanations.

Nothing in this package imports streamlit. TensorFlow is imported lazily by the modules that need it,
so `core.runs` and `core.data` stay cheap to import (the Home page renders without TensorFlow).
"""

import os

# TensorFlow's C++ info and warning lines (cost-model notes, partial caches) flood job logs and the command
# line; errors still show. Set here, before any module of the package can import TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
