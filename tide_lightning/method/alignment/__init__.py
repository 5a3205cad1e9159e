"""Cross-tokenizer chunk alignment (docs/method.md §9), in plain Python and NumPy.

- `byte_tables`: token id -> exact bytes, cached per tokenizer.
- `spans`: tokens on a common byte axis and the vectorised chunk search.
- `texts`: `align_texts` for one text; `chat`: `align_messages` for conversations.
- `tensors`: per-token chunk ids, the representation the losses and masking consume.
"""

from tide_lightning.method.alignment.byte_tables import TokenByteTable, byte_table
from tide_lightning.method.alignment.chat import ChatAlignment, align_messages
from tide_lightning.method.alignment.tensors import chunk_id_array, chunk_id_tensor, pad_chunk_ids
from tide_lightning.method.alignment.texts import ChunkAlignment, align_texts, align_token_ids

__all__ = [
    "ChatAlignment",
    "align_messages",
    "ChunkAlignment",
    "TokenByteTable",
    "align_texts",
    "align_token_ids",
    "chunk_id_array",
    "chunk_id_tensor",
    "pad_chunk_ids",
    "byte_table",
]
