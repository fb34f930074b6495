"""Small helpers shared by tests."""


def chain_text(error: BaseException) -> str:
    """The messages of an exception and of every exception it was raised from (MONAI wraps config errors)."""
    parts = []
    while error is not None:
        parts.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


def assert_close_to_scale(actual, expected, rel: float = 1e-4, msg: str | None = None) -> None:
    """Assert two results of the same fp32 computation done another way agree to `rel` of the expected tensor's
    largest magnitude.

    Another kernel (AMX, AVX-512, AVX2), another batch split or another number of processes sums in another
    order, so an absolute 1e-6 holds on one CPU and fails on the next; an error that matters (a wrong scale, a
    lost term, a swapped index) is of the order of the values themselves and is still caught.
    """
    import torch

    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, atol=rel * max(scale, 1e-12), rtol=rel, msg=msg)


def datalist_with_change(path: str, split: str, index: int, **changes) -> str:
    """A copy of the datalist JSON at `path`, next to it, with entry `index` of `split` changed (a value of `...`
    deletes the key); the copy's path."""
    import json

    data = json.loads(open(path).read())
    data[split][index].update(changes)
    for key, value in changes.items():
        if value is ...:
            del data[split][index][key]
    changed = f"{path[:-5]}_changed.json"
    with open(changed, "w") as f:
        json.dump(data, f)
    return changed
