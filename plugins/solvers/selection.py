"""Unsupervised feature selection: rank the features of an unlabelled training set, keep the top k.

Data (nothing downloads): scikit-learn's digits (64 pixels, 10 classes), or "madelon", the
generator behind the NIPS 2003 Madelon set (Guyon 2003; scikit-learn's make_classification):
`informative` features on the vertices of a hypercube, 16 clusters per class, `redundant`
linear combinations of them, the rest noise; columns shuffled, the relevant ones recorded. With
`rescale` (default) every feature is then shifted and scaled at random (scale log-uniform over
[1/4, 4]), as Guyon did for Madelon, so a feature's raw variance says nothing about relevance
(without it the relevant features have the largest variance and `variance` finds them all).
Splits (stratified, seeded): 60% train, 20% val, 20% test; an instance's data is the training
features only (solvers see no labels), its truth the labels and the held-out split it names.

Score, as in QuickSelection's evaluation (their QuickSelection.py): an ExtraTrees classifier
(50 trees) fitted on the k selected training features, accuracy on the held-out split; for
madelon also the recall of the relevant features, |selected & relevant| / min(k, |relevant|).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lowdim_bench.api import Knob, Measurement, PluginError, Quality
from lowdim_bench.hparams import Param

from ._contract import Instance, Problem, Solution, check_split, measurement, split_seed


@dataclass
class FeatureData:
    """What a selector sees: the training features, raw (not standardised), samples x features."""

    x: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape


@dataclass
class FeatureRanking(Solution):
    """The k features kept (most important first) and the importance of every feature."""

    selected: np.ndarray
    importance: np.ndarray


def top_k(importance: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest importances, largest first (ties by index, so runs repeat)."""
    order = np.lexsort((np.arange(len(importance)), -np.nan_to_num(importance, nan=-np.inf)))
    return order[:k]


# The options that shape the data (the rest, e.g. `trees`, only change the scorer).
DATA_OPTIONS = ("dataset", "samples", "features", "informative", "redundant", "rescale")


class FeatureSelection(Problem):
    name = "feature-selection"
    quality = Quality("accuracy", "", higher_is_better=True)
    size = Knob("features", low=1, high=None, help="number of features kept")
    description = "unsupervised feature selection; ExtraTrees accuracy on the top k, recall of relevant features"
    params = {
        "dataset": Param("digits", choices=("digits", "madelon"), help="digits pixels or the Madelon generator"),
        "samples": Param(2600, int, low=50, high=1_000_000, help="madelon: samples generated"),
        "features": Param(500, int, low=2, high=100_000, help="madelon: features in all"),
        "informative": Param(5, int, low=1, high=30, help="madelon: informative features"),
        "redundant": Param(15, int, low=0, high=1000, help="madelon: linear combinations of the informative ones"),
        "rescale": Param(True, bool, help="madelon: shift and scale every feature at random"),
        "trees": Param(50, int, low=1, high=10_000, help="ExtraTrees size for the downstream accuracy"),
    }

    def check_options(self) -> None:
        o = self.options
        if o["dataset"] == "madelon":
            if o["informative"] + o["redundant"] > o["features"]:
                raise PluginError(f"problem {self.name!r}: informative + redundant = {o['informative'] + o['redundant']}"
                                  f" exceeds features = {o['features']}")
            if 2 * 16 > 2 ** o["informative"]:
                raise PluginError(f"problem {self.name!r}: informative = {o['informative']} is too few for "
                                  "Madelon's 2 classes x 16 clusters (needs 2^informative >= 32)")

    def _dataset(self, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        from sklearn.datasets import load_digits, make_classification  # here: sklearn costs ~1 s at plugin load

        o = self.options
        if o["dataset"] == "digits":
            d = load_digits()
            return d.data.astype(float), d.target, None
        rng = np.random.default_rng(split_seed(self.name, "data", seed, {k: o[k] for k in DATA_OPTIONS}))
        x, y = make_classification(n_samples=o["samples"], n_features=o["features"], n_informative=o["informative"],
                                   n_redundant=o["redundant"], n_repeated=0, n_classes=2, n_clusters_per_class=16,
                                   flip_y=0.01, class_sep=1.0, hypercube=True, shuffle=False,
                                   random_state=int(rng.integers(2**31)))
        perm = rng.permutation(o["features"])
        x = x[:, perm]
        if o["rescale"]:
            x = x * np.exp(rng.uniform(-np.log(4), np.log(4), o["features"])) + rng.normal(0, 3, o["features"])
        relevant = np.flatnonzero(perm < o["informative"] + o["redundant"])
        return x, y, relevant

    def instance(self, split: str, seed: int) -> Instance:
        from sklearn.model_selection import train_test_split

        check_split(self.name, split)
        x, y, relevant = self._dataset(seed)
        data_opts = {k: self.options[k] for k in DATA_OPTIONS}
        rs = int(np.random.default_rng(split_seed(self.name, "split", seed, data_opts)).integers(2**31))
        x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=rs)
        x_val, x_te, y_val, y_te = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=rs)
        x_ev, y_ev = (x_val, y_val) if split == "val" else (x_te, y_te)
        truth = {"y_train": y_tr, "x_eval": x_ev, "y_eval": y_ev, "relevant": relevant, "classifier_seed": rs}
        info = {"samples": float(x_tr.shape[0]), "features": float(x.shape[1]),
                "relevant": float(len(relevant)) if relevant is not None else float("nan")}
        return Instance(self.name, split, seed, FeatureData(x_tr), truth, info)

    def size_range(self, instance: Instance) -> tuple[int, int]:
        return 1, instance.data.shape[1]

    def accuracy(self, instance: Instance, features: np.ndarray) -> float:
        from sklearn.ensemble import ExtraTreesClassifier

        t = instance.truth
        clf = ExtraTreesClassifier(n_estimators=self.options["trees"], random_state=t["classifier_seed"], n_jobs=1)
        clf.fit(instance.data.x[:, features], t["y_train"])
        return float(clf.score(t["x_eval"][:, features], t["y_eval"]))

    def score(self, instance: Instance, solution: Any) -> dict[str, Measurement]:
        if not isinstance(solution, FeatureRanking):
            raise PluginError(f"problem {self.name!r}: a solution must be a FeatureRanking, got {type(solution).__name__}")
        d = instance.data.shape[1]
        chosen = np.asarray(solution.selected)
        if chosen.ndim != 1 or not 1 <= len(chosen) <= d or len(np.unique(chosen)) != len(chosen) \
                or chosen.min() < 0 or chosen.max() >= d:
            raise PluginError(f"problem {self.name!r}: selected must list 1 to {d} distinct feature indices in [0, {d})")
        k = len(chosen)
        out = [measurement("accuracy", self.accuracy(instance, chosen), "", True)]
        relevant = instance.truth["relevant"]
        if relevant is not None:
            hit = len(np.intersect1d(chosen, relevant))
            out.append(measurement("relevant_recall", hit / min(k, len(relevant)), "", True))
        return {m.metric: m for m in out}
