"""4-bit teacher loading (``teacher.load_in_4bit``, the published ``--teacher_load_in_4bit``).

The published trainer quantizes the teacher to NF4 with double quantization and computes
in the teacher's dtype (bf16) through transformers' ``BitsAndBytesConfig``; when
bitsandbytes is missing it silently loads the full-precision teacher instead. Here the
option refuses, in one line, whatever would make it not happen: no CUDA device, no
bitsandbytes, or a ZeRO-3 sharded teacher (quantized weights are not partitioned by
DeepSpeed; a 4-bit teacher is the alternative to sharding, held whole on every GPU).

:func:`tide_lightning.models.frozen.setup_teacher` passes :func:`four_bit_config`'s result
as ``quantization_config`` to ``from_pretrained``, with ``device_map`` on the local GPU
(bitsandbytes weights cannot be moved with ``.to`` afterwards). :func:`refuse_four_bit`
checks the same conditions when the run is built, before any data or tokenizer work.
Nothing here imports bitsandbytes or transformers at import time. Not yet run on a GPU
in this project (no device was lent when it was written).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from tide_lightning.errors import ConfigError


def check_four_bit(
    sharding: str, cuda: bool | None = None, bitsandbytes: bool | None = None
) -> None:
    """Refuse ``teacher.load_in_4bit`` where it cannot run.

    Args:
        sharding: the resolved teacher sharding ("none" or "deepspeed").
        cuda: whether a CUDA device is present (None: ask torch).
        bitsandbytes: whether bitsandbytes is importable (None: look for it).

    Raises:
        ConfigError: one line naming the key and what is missing.
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if bitsandbytes is None:
        bitsandbytes = importlib.util.find_spec("bitsandbytes") is not None
    if not cuda:
        raise ConfigError(
            "teacher.load_in_4bit needs a CUDA device (bitsandbytes 4-bit runs on GPU)"
        )
    if not bitsandbytes:
        raise ConfigError(
            "teacher.load_in_4bit needs bitsandbytes: pip install 'bitsandbytes>=0.43'"
        )
    if sharding == "deepspeed":
        raise ConfigError(
            "teacher.load_in_4bit cannot be ZeRO-3 sharded: set teacher.sharding: none "
            "(each GPU then holds the whole 4-bit teacher)"
        )


def four_bit_config(sharding: str, compute_dtype: torch.dtype = torch.bfloat16) -> Any:
    """The published quantization: NF4, double quantization, compute in ``compute_dtype``.

    Args:
        sharding: the resolved teacher sharding (must be "none").
        compute_dtype: dtype of the dequantized matmuls (the teacher's dtype).

    Returns:
        A ``transformers.BitsAndBytesConfig`` for ``from_pretrained(quantization_config=...)``.

    Raises:
        ConfigError: see :func:`check_four_bit`.
    """
    check_four_bit(sharding)
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def refuse_four_bit(sharding: str, world_size: int) -> None:
    """The run-time check of ``teacher.load_in_4bit`` (called by the builders).

    Args:
        sharding: ``teacher.sharding`` as configured (auto resolves as the loader does:
            deepspeed with more than one process).
        world_size: processes of the run.

    Raises:
        ConfigError: what is missing.
    """
    from tide_lightning.models.sharding import resolve_sharding

    check_four_bit(resolve_sharding(sharding, world_size))
