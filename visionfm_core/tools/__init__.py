"""What users run: the `visionfm` command (`cli`), deployment export (`export`), the HTML report (`report`) and the
demo (`demo`). Each takes the bundles folder as a parameter."""

__all__: list[str] = []
