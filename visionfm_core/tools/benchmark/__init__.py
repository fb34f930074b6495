"""`visionfm benchmark`: the published protocol (fine-tuning, linear probe or k-NN) on local copies of the eight
public datasets, with bootstrap intervals, paired comparisons of encoders and the tables a paper needs.

- layout.py: finding and checking the datasets in RETFound's layout, their datalists, phantom copies for tests;
- protocol.py: the plan, its estimated cost, the resumable runs (through the classification bundle);
- statistics.py: bootstrap intervals (by patient), DeLong's test, paired bootstrap;
- tables.py: CSV, JSON and Markdown tables beside the published references (references.json);
- transforms.py: the fine-tuning recipe's RandomResizedCrop.
"""

from visionfm_core.tools.benchmark.layout import BenchmarkDataError, find_datasets, write_phantom_benchmark
from visionfm_core.tools.benchmark.protocol import PROTOCOLS, BenchmarkError, Settings, run_benchmark

__all__ = ["BenchmarkDataError", "BenchmarkError", "PROTOCOLS", "Settings", "find_datasets", "run_benchmark",
           "write_phantom_benchmark"]
