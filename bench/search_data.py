"""The synthetic data of bench/search_tasks/tabular.yaml: a seeded 10-class tabular problem, offline.

Used as `data: {dataset: "bench.search_data:make_task"}`; hpsearch calls it with `root=` (ignored here).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def make_task(root: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """3,000 samples, 30 features (12 informative, 6 redundant), 10 classes of 2 clusters each, 3 % label noise."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=3000, n_features=30, n_informative=12, n_redundant=6, n_classes=10,
                               n_clusters_per_class=2, class_sep=1.0, flip_y=0.03, random_state=0)
    # Unscaled, wide-ranging features (the engine normalises per feature): as raw tabular data comes.
    scales = np.logspace(-2, 2, x.shape[1], dtype=np.float64)
    return (x * scales).astype(np.float32), y.astype(np.int64)
