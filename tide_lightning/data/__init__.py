"""Data layer: sources -> mixture -> tokenized examples -> resumable sharded batches."""

from tide_lightning.data.collate import collate
from tide_lightning.data.datamodule import DistillDataModule
from tide_lightning.data.examples import Example, ExampleBuilder, chat_example, fill_to_block
from tide_lightning.data.sources import SKIP_REASONS, Record, SourceSpec, open_source
from tide_lightning.data.stream import Cursor, ShardedStream

__all__ = [
    "SKIP_REASONS",
    "Cursor",
    "DistillDataModule",
    "Example",
    "ExampleBuilder",
    "Record",
    "ShardedStream",
    "SourceSpec",
    "chat_example",
    "collate",
    "fill_to_block",
    "open_source",
]
