"""Teachers from local checkpoint directories: checked, built without remote code, verified.

No teacher ever runs remote code: ``llada2`` is this package's own implementation
(:mod:`tide_lightning.models.llada2`, registered with the Auto classes on import),
``wedlm`` is transformers' ``Qwen3ForCausalLM`` built from WeDLM's ``config.json``
(the architecture is Qwen3's; its checkpoint keys are Qwen3's). Only ``generic`` may
opt in to a directory's own code. Every load passes ``trust_remote_code`` explicitly,
so transformers never prompts on stdin, and checkpoint keys must match the model's
exactly.

After every load the non-persistent buffers (rotary ``inv_freq`` tables, which no
checkpoint stores) are compared with a fresh ``from_config`` copy built with
parameters on the meta device: transformers 5 fills such buffers with ``empty`` on
load and recomputes only the ones it recognises, so a miss gives finite but wrong
logits. A mismatch refuses the teacher, naming the buffer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tide_lightning.errors import UserError
from tide_lightning.models.teachers import (
    TeacherAdapter,
    TeacherKind,
    resolve_mask_id,
    teacher_kind,
)


def _read_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not path.is_dir():
        raise UserError(f"teacher directory {str(path)!r} does not exist")
    if not config_file.is_file():
        raise UserError(f"teacher directory {str(path)!r} has no config.json")
    config = json.loads(config_file.read_text())
    if config.get("vocab_size") is None:
        raise UserError(f"teacher config {str(config_file)!r} has no vocab_size")
    return config


def load_tokenizer_dir(path: str | Path):
    """A tokenizer saved in a local directory, without running or offering remote code.

    transformers asks on stdin ("run custom code? [y/N]") whenever a directory names
    custom classes (``auto_map``) and ``trust_remote_code`` is left unset; hub teacher
    directories do. Here it is always ``False``; a directory whose tokenizer class
    exists only as remote code is read as the plain fast tokenizer of its
    ``tokenizer.json`` (with its ``tokenizer_config.json`` special tokens).

    Raises:
        UserError: missing directory, or no tokenizer that loads without remote code.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"tokenizer directory {str(path)!r} does not exist")
    try:
        return AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False
        )
    except ValueError as err:
        if not (path / "tokenizer.json").is_file():
            raise UserError(
                f"tokenizer in {str(path)!r} needs remote code and has no tokenizer.json: {err}"
            ) from err
        return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


def _check_tokenizer(path: Path, kind: TeacherKind, rows: int) -> None:
    """If the directory has a tokenizer, it must fit the model and agree on the mask id."""
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return
    tok = load_tokenizer_dir(path)
    if len(tok) > rows:
        raise UserError(
            f"teacher tokenizer length {len(tok)} > model vocabulary {rows} in {str(path)!r}"
        )
    tok_mask = tok.mask_token_id
    if tok_mask is not None and tok_mask != kind.mask_token_id:
        raise UserError(
            f"teacher {kind.name!r} mask id {kind.mask_token_id} != tokenizer mask id {tok_mask}"
        )


# WeDLM config.json keys that Qwen3Config reads under the same name.
_QWEN3_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
    "max_position_embeddings", "initializer_range", "rms_norm_eps", "tie_word_embeddings",
    "rope_theta", "rope_scaling", "attention_dropout", "pad_token_id", "bos_token_id",
    "eos_token_id", "mask_token_id",
)  # fmt: skip


def wedlm_qwen3_config(raw: dict, where: str = "config.json"):
    """transformers' ``Qwen3Config`` for a WeDLM ``config.json`` (``model_type: wedlm``).

    WeDLM's remote model is Qwen3 when ``qk_norm`` is on and ``attention_bias`` off
    (WeDLM-8B): same modules, same parameter names, same rotary table. The other
    WeDLM variants are refused rather than approximated: with ``attention_bias``
    Qwen3 would also expect an ``o_proj`` bias WeDLM does not have, without ``qk_norm``
    it is a Qwen2.5 layout, and a sliding window is not expressed by the clean-first
    mask (the remote code also ignores it under a prepared mask).

    Args:
        raw: the parsed ``config.json``.
        where: its path, for error messages.

    Raises:
        UserError: a WeDLM variant this mapping does not cover (the key is named).
    """
    from transformers import Qwen3Config

    refused = {
        "qk_norm": (raw.get("qk_norm", False) is not True, "true (Qwen3-based WeDLM)"),
        "attention_bias": (raw.get("attention_bias", True) is not False, "false"),
        "use_sliding_window": (raw.get("use_sliding_window", False) is not False, "false"),
    }
    for key, (bad, wanted) in refused.items():
        if bad:
            raise UserError(
                f"{where}: WeDLM loads as transformers' Qwen3 only with {key}={wanted}, got "
                f"{raw.get(key)!r}"
            )
    kwargs = {k: raw[k] for k in _QWEN3_KEYS if k in raw}
    return Qwen3Config(**kwargs, attention_bias=False, use_sliding_window=False, use_cache=False)


def _llada2_model_class():
    try:
        importlib.import_module("tide_lightning.models.llada2")  # registers llada2_moe
    except ImportError as err:
        raise UserError(f"the llada2 teacher needs tide_lightning.models.llada2: {err}") from err
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def _from_pretrained(
    kind: TeacherKind,
    path: Path,
    raw: dict,
    dtype: torch.dtype,
    trust_remote_code: bool,
    quantization_config: Any = None,
) -> nn.Module:
    """The kind's own model class, loaded with strict key matching."""
    from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "local_files_only": True,
        "trust_remote_code": trust_remote_code,
        "output_loading_info": True,
    }
    if quantization_config is not None:
        # bitsandbytes weights are placed at load and cannot be moved with .to() afterwards
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    if kind.sdpa_only or kind.mask_format == "bool" or kind.name == "wedlm":
        kwargs["attn_implementation"] = "sdpa"
    if kind.name == "wedlm":
        cls = Qwen3ForCausalLM
        kwargs["config"] = wedlm_qwen3_config(raw, str(path / "config.json"))
    elif kind.name == "llada2":
        cls = _llada2_model_class()
    else:
        cls = AutoModelForCausalLM
    model, info = cls.from_pretrained(str(path), **kwargs)
    problems = {k: sorted(info.get(k) or ()) for k in ("missing_keys", "unexpected_keys")}
    problems |= {"mismatched_keys": [str(m) for m in info.get("mismatched_keys") or ()]}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        described = "; ".join(f"{k}: {', '.join(v[:5])}" for k, v in problems.items())
        raise UserError(
            f"teacher {kind.name!r} checkpoint {str(path)!r} does not match: {described}"
        )
    return model


def check_non_persistent_buffers(model: nn.Module, where: str = "teacher") -> None:
    """Compare every non-persistent buffer with a fresh ``from_config`` copy.

    The copy is built with its parameters on the meta device (no memory for the
    weights) and its buffers computed as ``__init__`` computes them.

    Raises:
        UserError: a buffer differs, naming it and its largest deviation.
    """
    from accelerate import init_empty_weights

    try:
        with init_empty_weights(include_buffers=False):
            fresh = type(model)._from_config(model.config)
    except Exception as err:  # refusing beats running a teacher whose buffers are unchecked
        raise UserError(
            f"{where}: cannot build a fresh {type(model).__name__} to check its buffers: {err}"
        ) from err
    expected = dict(fresh.named_buffers())
    for owner_name, owner in model.named_modules():
        for short in sorted(owner._non_persistent_buffers_set):
            loaded = owner._buffers.get(short)
            if loaded is not None:
                _compare_buffer(f"{owner_name}.{short}".lstrip("."), loaded, expected, where)


def _compare_buffer(name: str, loaded: Tensor, expected: dict[str, Tensor], where: str) -> None:
    want = expected.get(name)
    if want is None or want.shape != loaded.shape:
        raise UserError(f"{where} buffer {name!r} has no counterpart in a fresh copy")
    want = want.to(device=loaded.device, dtype=loaded.dtype)
    if not torch.allclose(loaded.float(), want.float(), rtol=1e-5, atol=0.0):
        worst = (loaded.float() - want.float()).abs().max().item()
        raise UserError(
            f"{where} buffer {name!r} differs from a fresh from_config copy (max deviation "
            f"{worst:.3g}); its values were not computed at load, refusing to start"
        )


def load_adapter(
    kind: str,
    path: str | Path,
    *,
    block_size: int = 32,
    dtype: torch.dtype = torch.float32,
    mask_token_id: int | None = None,
    trust_remote_code: bool = False,
    init_context: Callable[[], contextlib.AbstractContextManager] | None = None,
    quantization_config: Any = None,
) -> TeacherAdapter:
    """Load a frozen teacher adapter from a local directory; nothing downloads.

    Args:
        kind: a :data:`TEACHER_KINDS` key.
        path: local HF directory.
        block_size: ``Bk`` for the clean-first layout.
        dtype: parameter dtype.
        mask_token_id: override (see :func:`resolve_mask_id`).
        trust_remote_code: ``generic`` only: run the directory's own modeling code.
        init_context: a context manager factory wrapped around ``from_pretrained``
            (ZeRO-3 partitioned loading, :func:`tide_lightning.models.sharding.zero3_init`).
        quantization_config: a ``BitsAndBytesConfig`` (4-bit teacher,
            :func:`tide_lightning.models.quantization.four_bit_config`); the model is then
            placed on the current CUDA device at load.

    Raises:
        UserError: missing path, mask id outside the vocabulary, tokenizer/model
            mismatch, checkpoint keys that do not match the model, a non-persistent
            buffer that differs from a fresh copy (each named).
    """
    spec = teacher_kind(kind)
    if trust_remote_code and spec.name != "generic":
        raise UserError(
            f"teacher kind {kind!r} never runs remote code (it is built from this package or "
            "transformers); leave teacher.trust_remote_code unset"
        )
    path = Path(path)
    raw = _read_config(path)
    rows = raw["vocab_size"]
    spec = dataclasses.replace(spec, mask_token_id=resolve_mask_id(kind, path, mask_token_id))
    if not 0 <= spec.mask_token_id < rows:
        raise UserError(
            f"teacher {kind!r} mask id {spec.mask_token_id} is outside its vocabulary of {rows}"
        )
    _check_tokenizer(path, spec, rows)
    with init_context() if init_context is not None else contextlib.nullcontext():
        model = _from_pretrained(spec, path, raw, dtype, trust_remote_code, quantization_config)
    check_non_persistent_buffers(model, f"teacher {kind!r}")
    model.config.use_cache = False
    return TeacherAdapter(model, spec, block_size=block_size)
