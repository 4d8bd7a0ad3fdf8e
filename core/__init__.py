"""Core logic of the XAI dashboard: data, models, runs, training, evaluation, explanations.

Nothing in this package imports streamlit. TensorFlow is imported lazily by the modules that need it,
so `core.runs` and `core.data` stay cheap to import (the Home page renders without TensorFlow).
"""

__version__ = "0.1.0"
