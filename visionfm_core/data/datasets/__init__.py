"""Public datasets and generic CSVs to MONAI datalists: classification (`classification`) and dense tasks
(`converters`), with leak-free seeded splits."""

__all__: list[str] = []
