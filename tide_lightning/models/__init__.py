"""Models: the block-diffusion student, frozen teachers, and teacher sharding.

- :mod:`.student`: :class:`BD3LMStudent` (training forward on ``[xt ; x0]``, cached
  block decoding), :func:`build_student`, :func:`load_student`.
- :mod:`.teachers`: :class:`TeacherAdapter`, the :data:`TEACHER_KINDS` registry, the
  one mask-id resolution, the tiny Qwen3-MoE test teacher.
- :mod:`.loading`: :func:`load_adapter`, a teacher from a checkpoint directory (no
  remote code, strict keys, buffers checked), tokenizers without a prompt.
- :mod:`.frozen`: :class:`FrozenTeacher` and :func:`setup_teacher`, the one place a
  run's teacher is set up (load, dtype, shard, memory log, lock-step guard);
  :func:`load_teacher`, its public face.
- :mod:`.sharding`: the DeepSpeed ZeRO-3 pieces and the lock-step guard.
"""

from tide_lightning.models import kv_cache, masks
from tide_lightning.models.frozen import FrozenTeacher, load_teacher, setup_teacher
from tide_lightning.models.kv_cache import BlockCache
from tide_lightning.models.loading import load_adapter
from tide_lightning.models.sharding import LockstepGuard, TeacherLockstepError, zero3_config
from tide_lightning.models.student import BD3LMStudent, build_student, load_student
from tide_lightning.models.teachers import (
    TEACHER_KINDS,
    TeacherAdapter,
    TeacherKind,
    build_teacher,
    build_tiny_moe_teacher,
    resolve_mask_id,
)

__all__ = [
    "TEACHER_KINDS",
    "BD3LMStudent",
    "BlockCache",
    "FrozenTeacher",
    "LockstepGuard",
    "TeacherAdapter",
    "TeacherKind",
    "TeacherLockstepError",
    "build_student",
    "build_teacher",
    "build_tiny_moe_teacher",
    "kv_cache",
    "load_adapter",
    "load_student",
    "load_teacher",
    "masks",
    "resolve_mask_id",
    "setup_teacher",
    "zero3_config",
]
