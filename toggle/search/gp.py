"""Gaussian processes for the constrained BO sampler (BoTorch): one exact GP per property on the
robustness margins, and the surrogate that puts the sensitivity profile's prediction under them.
A module of its own because BoTorch takes seconds to import and only BO needs it."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood


def fit_models(x: np.ndarray, y: np.ndarray, warm: list | None = None, maxiter: int = 50) -> list:
    """One exact GP per property on the robustness margins (standardised).

    L-BFGS is capped at `maxiter` steps and starts from the previous fit's hyperparameters
    (`warm`, state dicts) when given: an uncapped fit of 180 lengthscales takes seconds to
    minutes on a CPU for no better ranking of candidates."""
    tx = torch.as_tensor(x, dtype=torch.float64)
    models = []
    for j in range(y.shape[1]):
        ty = torch.as_tensor(y[:, j:j + 1], dtype=torch.float64)
        model = SingleTaskGP(tx, ty, outcome_transform=Standardize(m=1))
        if warm and j < len(warm) and warm[j] is not None:
            try:
                hyper = {k: v for k, v in warm[j].items() if not k.startswith(("outcome_transform", "train_"))}
                model.load_state_dict(hyper, strict=False)
            except (RuntimeError, KeyError):
                pass  # shapes changed (another space): fit from the prior
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model),
                                 optimizer_kwargs={"options": {"maxiter": maxiter}})
            except Exception:  # noqa: BLE001 - an unfit GP (prior hyperparameters) still ranks candidates
                pass
        model.eval()
        models.append(model)
    return models


class Surrogate:
    """Robustness per property = prior mean + GP on the residual.

    The prior mean is a + b * (sensitivity profile's additive prediction), a and b >= 0 fitted by
    least squares on the observations (b = 0 without a profile, or when it does not help), so
    the GP only learns what single-group profiling cannot: interactions and the difference
    between the profiling subset and the full calibration suite."""

    def __init__(self, space, obs: dict, prior=None, warm=None, features=None):
        """`features`: index matrix -> (N, F) inputs of the GP (default: the index scaled to [0, 1]
        per dimension); a few aggregate features (the prior's predicted loss per zone of groups)
        let a GP learn from a dozen points what 180 raw dimensions would not."""
        self.space, self.prior, self.names = space, prior, obs["names"]
        self.features = features or space.unit
        y = obs["robustness"].copy()
        self.coef = np.zeros((len(self.names), 2))
        self.coef[:, 0] = y.mean(axis=0) if len(y) else 0.0
        base = self._prior(obs["index"])
        if base is not None and len(y) >= 3:
            for j in range(len(self.names)):
                a, b = _fit_line(base[:, j], y[:, j])
                self.coef[j] = (a, b)
        partial = obs.get("partial")
        if partial is not None and partial.any():
            # An evaluation stopped early gives upper bounds: the truth is at most the observed
            # value, so where the model predicts lower, believe the model.
            y[partial] = np.minimum(y[partial], self._mean(obs["index"][partial]))
        self.models = fit_models(self.features(obs["index"]), y - self._mean(obs["index"]), warm=warm)

    def _prior(self, index) -> np.ndarray | None:
        if self.prior is None:
            return None
        pred = self.prior(index)
        cols = [self.prior.names.index(n) if n in self.prior.names else None for n in self.names]
        return np.stack([pred[:, c] if c is not None else np.zeros(len(pred)) for c in cols], axis=1)

    def _mean(self, index) -> np.ndarray:
        base = self._prior(index)
        n = np.atleast_2d(index).shape[0]
        if base is None:
            return np.tile(self.coef[:, 0], (n, 1))
        return self.coef[:, 0] + self.coef[:, 1] * base

    def state(self) -> list:
        return [m.state_dict() for m in self.models]

    def predict(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, sd = gp_predict(self.models, self.features(index))
        return mu + self._mean(index), sd

    def condition_on_pending(self, pending: np.ndarray) -> np.ndarray:
        """Kriging believer: pretend each pending point returned its predicted mean."""
        tx = torch.as_tensor(self.features(pending), dtype=torch.float64)
        with torch.no_grad():
            means = [m.posterior(tx).mean for m in self.models]
            self.models = [m.condition_on_observations(tx, mean) for m, mean in zip(self.models, means)]
        return np.concatenate([m.numpy() for m in means], axis=1) + self._mean(pending)

    def log_prob_feasible(self, index: np.ndarray) -> np.ndarray:
        """sum_p log P(robustness_p(x) >= 0)."""
        mu, sd = self.predict(index)
        return torch.special.log_ndtr(torch.as_tensor(mu / sd)).sum(dim=1).numpy()


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """y ~ a + b x with b >= 0 (more predicted margin never means less)."""
    if np.ptp(x) < 1e-12:
        return float(y.mean()), 0.0
    b = max(float(np.polyfit(x, y, 1)[0]), 0.0)
    return float((y - b * x).mean()), b


def gp_predict(models: list, x: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation of each GP at each row of x (noise-free, in the
    outcomes' units)."""
    mu = np.zeros((len(x), len(models)))
    sd = np.zeros((len(x), len(models)))
    with torch.no_grad():
        for j, m in enumerate(models):
            predict = _exact_predictor(m)
            for start in range(0, len(x), batch):
                tx = torch.as_tensor(x[start:start + batch], dtype=torch.float64)
                mean, var = predict(tx)
                mu[start:start + batch, j] = mean.numpy()
                sd[start:start + batch, j] = var.clamp_min(1e-12).sqrt().numpy()
    return mu, sd


def _exact_predictor(model):
    """The exact GP posterior of a SingleTaskGP (constant mean, Gaussian noise, Standardize) as
    two triangular solves on one Cholesky factor. BoTorch's `posterior` gives the same numbers
    (within 1e-10) 30x slower for thousands of candidates: its lazy algebra builds the candidates'
    joint covariance to read its diagonal. Anything else falls back to `posterior`."""
    def fallback(tx):
        post = model.posterior(tx)
        return post.mean.squeeze(-1), post.variance.squeeze(-1)

    transform = getattr(model, "outcome_transform", None)
    if not isinstance(transform, Standardize) or model.train_targets.dim() != 1:
        return fallback
    try:
        train = model.train_inputs[0]
        const = model.mean_module.constant
        gram = model.covar_module(train).to_dense()
        chol = torch.linalg.cholesky(gram + model.likelihood.noise * torch.eye(len(train), dtype=train.dtype))
        alpha = torch.cholesky_solve((model.train_targets - const).unsqueeze(-1), chol)
    except (RuntimeError, AttributeError):  # not positive definite, or another model's shape
        return fallback
    scale, shift = transform.stdvs.reshape(()), transform.means.reshape(())

    def predict(tx):
        cross = model.covar_module(tx, train).to_dense()
        mean = const + (cross @ alpha).squeeze(-1)
        v = torch.linalg.solve_triangular(chol, cross.T, upper=False)
        var = model.covar_module(tx, diag=True) - (v * v).sum(0)
        return mean * scale + shift, var * scale**2

    return predict
