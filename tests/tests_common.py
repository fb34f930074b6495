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


def run_measuring_memory(cmd, poll_s: float = 0.02, **popen_kwargs):
    """Run `cmd` (a subprocess, as for subprocess.Popen) and poll its process tree's memory until it exits (Linux:
    /proc). Returns (returncode, stdout+stderr text, peak_pss_bytes, peak_rss_bytes): the largest sums over the
    process and its descendants (DataLoader workers) seen at one poll. PSS shares the pages forked workers inherit
    among them (what the tree really holds); the RSS sum counts those pages once per process (what `top` adds up)."""
    import os
    import subprocess
    import tempfile

    def descendants(pid):
        found, todo = [], [pid]
        while todo:
            p = todo.pop()
            found.append(p)
            try:
                for task in os.listdir(f"/proc/{p}/task"):
                    with open(f"/proc/{p}/task/{task}/children") as f:
                        todo += [int(c) for c in f.read().split()]
            except OSError:
                pass
        return found

    def field(pid, path, name):
        try:
            with open(f"/proc/{pid}/{path}") as f:
                for line in f:
                    if line.startswith(name):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **popen_kwargs)
        peak_pss = peak_rss = 0
        while proc.poll() is None:
            pids = descendants(proc.pid)
            peak_pss = max(peak_pss, sum(field(p, "smaps_rollup", "Pss:") for p in pids))
            peak_rss = max(peak_rss, sum(field(p, "status", "VmRSS:") for p in pids))
            try:
                proc.wait(poll_s)
            except subprocess.TimeoutExpired:
                pass
        log.seek(0)
        return proc.returncode, log.read().decode(errors="replace"), peak_pss, peak_rss


def fundus_like(path, width: int, height: int) -> str:
    """A disc on black with a bright optic disc: compressible, so a big PNG is written in a moment."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(im)
    draw.ellipse((width // 20, height // 20, width - width // 20, height - height // 20), fill=(180, 90, 40))
    draw.ellipse((width // 2, height // 3, width // 2 + width // 8, height // 3 + height // 8), fill=(250, 220, 150))
    im.save(path, compress_level=1)
    return str(path)


def assert_scripts_and_exports(net, x, tmp_path) -> None:
    """What the bundle checks do with a network: torch.jit.script and ONNX export (run through ONNX Runtime) both
    give the eager outputs on `x`."""
    import onnxruntime
    import torch

    with torch.no_grad():
        expected = net(x)
        assert_close_to_scale(torch.jit.script(net)(x), expected)
    torch.onnx.export(net, (x,), str(tmp_path / "m.onnx"), input_names=["image"], dynamo=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert_close_to_scale(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), expected)
