"""Models: the block-diffusion student, frozen teachers, and teacher sharding.

- :mod:`.student`: :class:`BD3LMStudent` (training forward on ``[xt ; x0]``, cached
  block decoding), :func:`build_student`, :func:`load_student`.
- :mod:`.teachers`: :class:`TeacherAdapter`, the :data:`TEACHER_KINDS` registry,
  :func:`build_teacher`, :func:`load_teacher`, the tiny Qwen3-MoE test teacher.
- :mod:`.sharding`: :func:`shard_teacher` (DeepSpeed ZeRO-3 or ``none``) and the
  lock-step guard.
- :mod:`.frozen`: :class:`TeacherHolder`, how a LightningModule holds a teacher.
"""

from tide_lightning.models import kv_cache, masks
from tide_lightning.models.frozen import TeacherHolder, hold_teacher, setup_teacher
from tide_lightning.models.kv_cache import BlockCache
from tide_lightning.models.sharding import (
    LockstepGuard,
    ShardedTeacher,
    TeacherLockstepError,
    shard_teacher,
    zero3_config,
)
from tide_lightning.models.student import BD3LMStudent, build_student, load_student
from tide_lightning.models.teachers import (
    TEACHER_KINDS,
    TeacherAdapter,
    TeacherKind,
    build_teacher,
    build_tiny_moe_teacher,
    load_teacher,
)

__all__ = [
    "TEACHER_KINDS",
    "BD3LMStudent",
    "BlockCache",
    "LockstepGuard",
    "ShardedTeacher",
    "TeacherAdapter",
    "TeacherHolder",
    "TeacherKind",
    "TeacherLockstepError",
    "build_student",
    "build_teacher",
    "build_tiny_moe_teacher",
    "hold_teacher",
    "kv_cache",
    "load_student",
    "load_teacher",
    "masks",
    "setup_teacher",
    "shard_teacher",
    "zero3_config",
]
