"""The "heavy_model" of SnakeBridge's SessionContext guide: load() returns a model object."""


class Model:
    def __init__(self):
        from sklearn.linear_model import LinearRegression

        self.inner = LinearRegression().fit([[0.0], [1.0], [2.0]], [1.0, 3.0, 5.0])

    def predict(self, data):
        return self.inner.predict([[x] for x in data]).tolist()


def load():
    return Model()
