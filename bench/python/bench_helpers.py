"""Python side of the Snakeport benchmarks (put on the worker's PYTHONPATH)."""


def identity(value):
    """Return the argument unchanged (binary echo)."""
    return value


class Box:
    """A tiny object: not data, so it comes back to Elixir as a ref."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


def make_objects(n):
    """A list of ``n`` fresh objects: ``n`` refs in the caller's session."""
    return [Box(i) for i in range(n)]


def numbers(n):
    """``list(range(n))``: the same items as a stream of ``range(n)``, as one list result."""
    return list(range(n))


def fitted_regression(n_features, n_rows=1000, seed=0):
    """A ``LinearRegression`` fitted on ``n_rows`` random rows of ``n_features`` features."""
    import numpy as np
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(seed)
    x = rng.random((n_rows, n_features))
    y = x @ np.arange(1, n_features + 1) + 0.5
    return LinearRegression().fit(x, y)


def predict_list(model, rows):
    """``predict`` the way it was done without arrays: rows as lists, predictions ``.tolist()``."""
    return model.predict(rows).tolist()
