"""A module that the allow-list tests must never see imported (its name is refused)."""

IMPORTED = True


def allowed():
    return "allowed"


def other():
    return "other"
