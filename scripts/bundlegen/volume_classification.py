"""(being written)"""


def bundles() -> dict[str, dict[str, str]]:
    return {}
