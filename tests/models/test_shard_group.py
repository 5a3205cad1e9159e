"""``teacher.shard_group: node``: teacher all-gathers stay inside a node.

Four gloo processes stand for two nodes of two GPUs. With ``zero3_config(node_size=2)``
every all-gather DeepSpeed runs for the teacher's forward uses the rank's node group
({0, 1} or {2, 3}), with the world group (``node_size=1``) they span all four ranks; the
logits equal the whole model's either way.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD, NODE = 4, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record_gathers(calls: list) -> None:
    """Wrap DeepSpeed's communication backend so every all-gather records its group."""
    from deepspeed.comm import comm as ds_comm

    backend = ds_comm.cdb
    for name in [n for n in dir(backend) if n.startswith(("all_gather", "allgather"))]:
        original = getattr(backend, name)

        def recorded(*args, _original=original, **kwargs):
            group = kwargs.get("group")
            ranks = dist.get_process_group_ranks(group) if group is not None else range(WORLD)
            calls.append(tuple(ranks))
            return _original(*args, **kwargs)

        setattr(backend, name, recorded)


def _worker(rank: int, port: int, node_size: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank % NODE), LOCAL_WORLD_SIZE=str(NODE),
    )  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    import deepspeed
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tide_lightning.models.sharding import zero3_config

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
    )  # fmt: skip
    model = Qwen3ForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        whole = model(ids, use_cache=False).logits
    ds_config = zero3_config(torch.float32, node_size=node_size)
    deepspeed.zero.Init(module=model, config_dict_or_path=ds_config)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    engine.eval()
    calls: list = []
    _record_gathers(calls)
    diffs = []
    for _ in range(2):
        with torch.no_grad():
            diffs.append((engine(ids, use_cache=False).logits - whole).abs().max().item())
    local = sum(p.ds_tensor.numel() for p in model.parameters())
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"groups": sorted(set(calls)), "diff": max(diffs), "local": local}, f)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("node_size", [NODE, 1])
def test_node_shard_group_keeps_teacher_gathers_on_the_node(tmp_path, node_size):
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(_free_port(), node_size, out), nprocs=WORLD, join=True)
    results = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(WORLD)]
    for rank, result in enumerate(results):
        assert result["diff"] < 1e-6
        groups = {tuple(g) for g in result["groups"]}
        node = tuple(range(rank // NODE * NODE, rank // NODE * NODE + NODE))
        assert groups == ({node} if node_size == NODE else {tuple(range(WORLD))}), groups
