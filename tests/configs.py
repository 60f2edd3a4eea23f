"""Config helpers shared by the tests."""


def override(config, overrides: dict):
    """Sets each dotted key of ``overrides`` ("evals.decode.batch_size": 8) in ``config``;
    returns it."""
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    return config
