"""Feature vectors (n, d) -> 2-D points: PCA and t-SNE (scikit-learn). Pure numpy; no model, no TensorFlow.

PCA runs on the raw features (centred, not scaled). t-SNE runs on their first `TSNE_INPUT_DIMENSIONS`
principal components when there are more dimensions (the usual practice, and much faster), with the
perplexity clipped to n - 1, PCA initialisation and a fixed seed, so the same features give the same
picture.
"""

from __future__ import annotations

import numpy as np

DEFAULT_PERPLEXITY = 30.0
TSNE_INPUT_DIMENSIONS = 50
MIN_POINTS = 3
SINGLE_THREAD_BELOW = 5000
"""t-SNE runs on one OpenMP thread for fewer points than this: measured on 2 busy cores, 425 points took
2-8 s on one thread and 50-90 s with the default threads (spinning threads starve each other), and below a
few thousand points more threads gain little even on an idle machine."""


def check_features(features, minimum: int = MIN_POINTS) -> np.ndarray:
    """Features as a finite float64 (n, d) array of at least ``minimum`` rows; raises ValueError otherwise."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"Expected features of shape (n, d). Received: shape {x.shape}")
    if len(x) < minimum:
        raise ValueError(f"Expected at least {minimum} images to project. Received: {len(x)}")
    if not np.isfinite(x).all():
        raise ValueError("The features contain NaN or infinite values: the model's outputs are not finite.")
    return x


def project_pca(features, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Features (n, d) -> (their first two principal components (n, 2) float64, the fraction of the variance
    each explains). A component that does not exist (d = 1) is all zeros."""
    from sklearn.decomposition import PCA

    x = check_features(features)
    count = min(2, x.shape[0], x.shape[1])
    pca = PCA(n_components=count, svd_solver="full", random_state=seed)
    coords = np.zeros((len(x), 2))
    coords[:, :count] = pca.fit_transform(x)
    ratio = np.nan_to_num(pca.explained_variance_ratio_, nan=0.0).tolist()
    return coords, ratio + [0.0] * (2 - count)


def project_tsne(features, seed: int = 0, perplexity: float = DEFAULT_PERPLEXITY) -> tuple[np.ndarray, dict]:
    """Features (n, d) -> (t-SNE coordinates (n, 2) float64, the settings used: ``perplexity`` (clipped to
    n - 1), ``input_dimensions`` (at most `TSNE_INPUT_DIMENSIONS` principal components) and ``init``)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = check_features(features)
    if not (isinstance(perplexity, (int, float)) and perplexity > 0):
        raise ValueError(f"Expected a perplexity above 0. Received: perplexity={perplexity!r}")
    if x.shape[1] > TSNE_INPUT_DIMENSIONS:
        x = PCA(n_components=min(TSNE_INPUT_DIMENSIONS, *x.shape), svd_solver="full").fit_transform(x)
    effective = float(min(perplexity, len(x) - 1))
    init = "pca" if x.shape[1] >= 2 and float(x.std(axis=0).max()) > 1e-12 else "random"
    tsne = TSNE(n_components=2, perplexity=effective, init=init, learning_rate="auto", random_state=seed)
    with threadpool_limits(limits=1 if len(x) < SINGLE_THREAD_BELOW else None, user_api="openmp"):
        coords = tsne.fit_transform(x)
    return coords.astype(np.float64), {"perplexity": effective, "input_dimensions": int(x.shape[1]), "init": init}
