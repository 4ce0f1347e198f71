"""A module the allow-list tests must never see imported (no entry names it)."""


def hello():
    return "hello"
