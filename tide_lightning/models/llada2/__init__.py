"""LLaDA2-MoE (LLaDA2.0-mini and relatives) as a native transformers 5 model.

Importing this package registers ``model_type: llada2_moe`` with ``AutoConfig``,
``AutoModel`` and ``AutoModelForCausalLM``. From then on a hub directory loads with
``AutoModelForCausalLM.from_pretrained(path)`` through :mod:`.modeling`: the directory's
``auto_map`` and remote ``*.py`` files are ignored (transformers prefers a registered
class when ``trust_remote_code`` is not set, and asks nothing on stdin).

It is imported where a ``llada2`` teacher is loaded, not by ``tide_lightning.models``,
so importing the package does not touch the Auto registries.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from tide_lightning.models.llada2.configuration import LLaDA2MoeConfig
from tide_lightning.models.llada2.modeling import (
    LLaDA2MoeForCausalLM,
    LLaDA2MoeModel,
    SparseMoeBlock,
)

AutoConfig.register(LLaDA2MoeConfig.model_type, LLaDA2MoeConfig, exist_ok=True)
AutoModel.register(LLaDA2MoeConfig, LLaDA2MoeModel, exist_ok=True)
AutoModelForCausalLM.register(LLaDA2MoeConfig, LLaDA2MoeForCausalLM, exist_ok=True)

__all__ = ["LLaDA2MoeConfig", "LLaDA2MoeForCausalLM", "LLaDA2MoeModel", "SparseMoeBlock"]
