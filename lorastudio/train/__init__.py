"""Training: config, recommender, packing, the trainer loop.

```python
from lorastudio.train import TrainConfig, recommend, train
result = train(TrainConfig(data="faq.jsonl", base="default", output_dir="runs/faq"), on_event=print)
```
Importing this package does not import torch (the trainer imports it when a run starts).
"""

from lorastudio.train.checkpoints import latest as latest_checkpoint
from lorastudio.train.config import ConfigError, TrainConfig
from lorastudio.train.events import EventLog, read_events
from lorastudio.train.recommend import Recommendation, recommend
from lorastudio.train.tokenize import encode_conversation, render_prompt
from lorastudio.train.trainer import (
    DataUnusable,
    DeviceSetup,
    Trainer,
    TrainingInterrupted,
    TrainResult,
    device_setup,
    train,
)

__all__ = [
    "ConfigError", "DataUnusable", "DeviceSetup", "EventLog", "TrainConfig", "TrainResult", "Trainer", "TrainingInterrupted",
    "device_setup", "encode_conversation", "latest_checkpoint", "read_events", "Recommendation", "recommend",
    "render_prompt", "train",
]
