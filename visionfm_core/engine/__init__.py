"""What every family's training and inference share, one concern a module.

- `precision`: inference and training precision (bf16/fp16 autocast, int8), picked for the hardware;
- `distributed`: torchrun set-up, DDP wrapping, decisions made on all-reduced values;
- `progress`: a progress bar on a terminal, log lines with rate and ETA elsewhere;
- `run_notes`: where a run's encoder came from (encoder_source.json);
- `optim`: optimiser and parameter groups for fine-tuning;
- `io`: atomic file writes;
- `checkpoint`: model files loaded by the bundles' configs, through the safe loader (one line on refusal);
- `unreadable`: inference that keeps going past unreadable files, and their report;
- `writers`: the base classes and helpers of the families' output writers;
- `metric_utils`: small helpers the families' metrics share;
- `resume`: task training that resumes after a kill and refuses to write over another run's model (the `resume`
  setting and run identity, shared with pretraining);
- `output_lock`: one inference/evaluation at a time per output folder; a finished run's results kept unless
  `overwrite`.
"""

__all__: list[str] = []
