"""Row-chunked losses over large vocabularies with analytic gradients.

With ``V = 151,936`` a single float32 ``[N, V]`` intermediate at ``N = 1024`` masked
positions is 622 MB, and autograd through a naive KL keeps five or six of them alive.
Here every loss is a *kernel* that, for a slice of rows, returns the summed loss and
(when the input needs a gradient) the gradient of that sum with respect to the
student rows. The slices are upcast to float32 one at a time, so the only full-size
tensor is the gradient itself, in the logits' own dtype. The gradient is produced in
the forward pass, which also makes the whole thing one pass instead of two.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: float32 elements per row slice (8 MB); at V = 151,936 this is 13 rows.
CHUNK_ELEMENTS = 1 << 21

Kernel = Callable[..., tuple[Tensor, Tensor | None]]


def rows_per_chunk(vocab_size: int) -> int:
    """Rows per float32 slice so that a slice holds at most ``CHUNK_ELEMENTS`` values."""
    return max(1, CHUNK_ELEMENTS // max(vocab_size, 1))


class _RowChunkedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student: Tensor, kernel: Kernel, chunk_rows: int, *row_args: Tensor):
        need_grad = ctx.needs_input_grad[0]
        total = torch.zeros((), dtype=torch.float64, device=student.device)
        grad = torch.empty_like(student) if need_grad else None
        for start in range(0, student.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            loss, g = kernel(student[rows].float(), *(a[rows] for a in row_args), need_grad)
            total += loss.double()
            if need_grad:
                grad[rows] = g
        # Kept on ctx rather than saved: backward hands this very buffer to autograd
        # (scaled in place), so no second [N, V] tensor is ever allocated.
        ctx.grad = grad
        ctx.num_row_args = len(row_args)
        return total.float()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor):
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("row-chunked losses support a single backward pass")
        if not bool(grad_output == 1):
            grad.mul_(grad_output.to(grad.dtype))
        return (grad, None, None) + (None,) * ctx.num_row_args


def row_chunked_loss(student: Tensor, kernel: Kernel, *row_args: Tensor) -> Tensor:
    """Sum over rows of ``kernel``'s loss, with its analytic gradient for ``student``.

    Args:
        student: Float[N, V] student logits (any float dtype; may require grad).
        kernel: ``kernel(s_f32[n, V], *row_arg_slices, need_grad) -> (loss_sum, grad[n, V] | None)``.
        row_args: tensors whose first dimension is ``N`` (teacher logits, per-row
            coefficients); never differentiated.

    Returns:
        Float32 scalar.
    """
    chunk_rows = rows_per_chunk(student.shape[-1])
    row_args = tuple(a.detach() for a in row_args)
    return _RowChunkedLoss.apply(student, kernel, chunk_rows, *row_args)


class _GoldLogProb(torch.autograd.Function):
    """Per-row ``log_softmax(s)[y]`` without a full float32 ``[N, V]`` log-softmax."""

    @staticmethod
    def forward(ctx, student: Tensor, targets: Tensor, chunk_rows: int):
        out = torch.empty(student.shape[0], dtype=torch.float32, device=student.device)
        for start in range(0, student.shape[0], chunk_rows):
            s = student[start : start + chunk_rows].float()
            y = targets[start : start + chunk_rows]
            out[start : start + chunk_rows] = s.gather(1, y[:, None]).squeeze(1) - s.logsumexp(-1)
        ctx.save_for_backward(student, targets)
        ctx.chunk_rows = chunk_rows
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        student, targets = ctx.saved_tensors
        grad = torch.empty_like(student)
        step = ctx.chunk_rows
        for start in range(0, student.shape[0], step):
            rows = slice(start, start + step)
            p = torch.softmax(student[rows].float(), dim=-1)
            g = -p
            g.scatter_add_(1, targets[rows, None], torch.ones_like(p[:, :1]))
            grad[rows] = g * grad_out[rows, None]
        return grad, None, None


def gold_log_probs(logits: Tensor, targets: Tensor) -> Tensor:
    """``log softmax(logits)[target]`` per row, float32, chunked over rows.

    Args:
        logits: Float[N, V].
        targets: Long[N].

    Returns:
        Float32[N]; differentiable with respect to ``logits``.
    """
    return _GoldLogProb.apply(logits, targets, rows_per_chunk(logits.shape[-1]))
