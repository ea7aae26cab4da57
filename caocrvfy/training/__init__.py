"""Training, the third stage (after data and the model): `config` (TrainConfig, the command line,
RunPlan), `datasets` (the run's data), `compile` (optimizer, loss, metrics), `warm_start` (--init),
`callbacks` (warmup, schedules, time limit, resumable checkpoints), `distribute` (devices, several
GPUs or machines), `curves` (curves.png) and `trainer` (one run, start to finish).

    from caocrvfy.training import TrainConfig, train
    run_dir = train(TrainConfig(data="my/captchas", time_limit=10))
"""

from caocrvfy.training.config import TrainConfig
from caocrvfy.training.trainer import train

__all__ = ["TrainConfig", "train"]
