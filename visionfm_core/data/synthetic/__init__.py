"""Built-in data that installs offline: the real sample photo, and phantoms for every modality and task."""

__all__: list[str] = []
