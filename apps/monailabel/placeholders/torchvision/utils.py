"""The two names monailabel imports from `torchvision.utils`; calling them says why they are unavailable."""


def _unavailable(name):
    def call(*args, **kwargs):
        raise RuntimeError(
            f"torchvision.utils.{name} is a placeholder of the VisionFM MONAI Label app (no torchvision on this "
            "CPU install); install a torchvision build that matches your torch to use MONAI Label's image dumps."
        )

    call.__name__ = name
    return call


make_grid = _unavailable("make_grid")
save_image = _unavailable("save_image")
