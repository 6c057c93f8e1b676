"""L-BFGS with a fixed step, its history kept as matrices.

The algorithm is PyTorch's ``torch.optim.LBFGS`` without line search (the same
iterates in exact arithmetic, the same first step ``min(1, 1/‖g‖₁)·lr``, the same
memory rule ``yᵀs > 1e-10`` and the same stop tests), which is how DLG and the other
gradient-matching attacks use it. What differs is how the direction ``-H·g`` is
computed. PyTorch runs the two-loop recursion (Nocedal, 1980) in Python: three small
tensor operations per stored pair and loop, so with a history of 200 pairs about
1,200 operations per iteration, more time than the attack's objective itself on a
small model. Both loops are triangular systems in the pair products
``A[i, j] = s_i·y_j`` (oldest pair first): with ``R = triu(A)``,

    α = R⁻¹ (−S g),    q = −g − Yᵀα,    r₀ = γ q,    c = R⁻ᵀ (diag(R) α − Y r₀),
    d = r₀ + Sᵀc,

where ``S`` and ``Y`` stack the pairs as rows and ``γ = yᵀs / yᵀy`` of the latest
pair. :class:`History` keeps ``S``, ``Y`` and ``A`` up to date (two matrix-vector
products per new pair), so an iteration costs a handful of operations whatever the
history size. The small triangular solves run in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

MEMORY_MIN_CURVATURE = 1e-10
"""A pair enters the history only if ``yᵀs`` exceeds this (PyTorch's rule)."""


class History:
    """The last ``size`` curvature pairs ``(s, y)`` of ``n``-vectors, oldest first, and
    their products ``A[i, j] = s_i·y_j`` (float64).

    The pairs are rows of buffers twice the history's size: the stored window
    ``[start, start + count)`` slides forward as pairs arrive and is copied back to the
    front when it reaches the end, so the window is always a contiguous view in
    chronological order (one copy every ``size`` pairs).
    """

    def __init__(self, size: int, like: torch.Tensor) -> None:
        self.size = size
        self._s = like.new_zeros(2 * size, like.numel())
        self._y = like.new_zeros(2 * size, like.numel())
        self._a = torch.zeros(2 * size, 2 * size, dtype=torch.float64, device=like.device)
        self.count = 0
        self.start = 0

    @property
    def s(self) -> torch.Tensor:
        """``(count, n)``: the steps ``s_i``, oldest first."""
        return self._s[self.start : self.start + self.count]

    @property
    def y(self) -> torch.Tensor:
        """``(count, n)``: the gradient changes ``y_i``, oldest first."""
        return self._y[self.start : self.start + self.count]

    @property
    def a(self) -> torch.Tensor:
        """``(count, count)``: ``s_i·y_j``."""
        window = slice(self.start, self.start + self.count)
        return self._a[window, window]

    def add(self, s: torch.Tensor, y: torch.Tensor, ys: torch.Tensor) -> None:
        """Store the pair (dropping the oldest when full); ``ys`` is ``y·s``."""
        if self.count == self.size:
            self.start += 1
            self.count -= 1
        if self.start + self.count == 2 * self.size:  # the window reached the end
            keep = slice(self.start, self.start + self.count)
            self._s[: self.count] = self._s[keep].clone()
            self._y[: self.count] = self._y[keep].clone()
            self._a[: self.count, : self.count] = self._a[keep, keep].clone()
            self.start = 0
        new = self.start + self.count
        self._s[new] = s
        self._y[new] = y
        self.count += 1
        old = slice(self.start, new)
        self._a[old, new] = (self._s[old] @ y).double()  # s_i · y_new
        self._a[new, old] = (self._y[old] @ s).double()  # s_new · y_j
        self._a[new, new] = ys.double()

    def direction(self, g: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
        """``-H g`` for the L-BFGS inverse-Hessian approximation with ``H₀ = γ I``."""
        s, y = self.s, self.y
        r = torch.triu(self.a)
        alpha = torch.linalg.solve_triangular(r, -(s @ g).double().unsqueeze(1), upper=True)
        r0 = (-g - alpha.squeeze(1).to(g.dtype) @ y) * gamma
        rhs = torch.diagonal(r).unsqueeze(1) * alpha - (y @ r0).double().unsqueeze(1)
        c = torch.linalg.solve_triangular(r.T, rhs, upper=False)
        return r0 + c.squeeze(1).to(g.dtype) @ s


class LBFGS(torch.optim.Optimizer):
    """L-BFGS with a fixed step ``lr`` on one parameter group (see the module).

    Args, as ``torch.optim.LBFGS``'s: ``lr``; ``max_iter`` iterations per
    :meth:`step`; ``max_eval`` objective evaluations per step (default
    ``max_iter · 5/4``); ``tolerance_grad`` (stop when ``max|g| ≤`` it);
    ``tolerance_change`` (stop when the step, the loss change or the directional
    derivative is that small); ``history_size`` pairs kept.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1.0,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
    ) -> None:
        defaults = {
            "lr": lr,
            "max_iter": max_iter,
            "max_eval": max_eval if max_eval is not None else max_iter * 5 // 4,
            "tolerance_grad": tolerance_grad,
            "tolerance_change": tolerance_change,
            "history_size": history_size,
        }
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS takes one parameter group")
        self._params: list[torch.Tensor] = self.param_groups[0]["params"]
        self._history: History | None = None
        self._iterations = 0
        self._d = torch.empty(0)
        self._t: torch.Tensor | float = 0.0
        self._prev_grad = torch.empty(0)
        self._gamma: torch.Tensor | float = 1.0

    def _flat_grad(self) -> torch.Tensor:
        return torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                for p in self._params
            ]
        )

    @torch.no_grad()
    def _move(self, t: torch.Tensor | float, d: torch.Tensor) -> None:
        offset = 0
        for p in self._params:
            p.add_(d[offset : offset + p.numel()].view_as(p), alpha=float(t))
            offset += p.numel()

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        """Up to ``max_iter`` iterations; returns the objective at the start of the step."""
        group = self.param_groups[0]
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        evaluate = torch.enable_grad()(closure)

        first = evaluate()
        loss = float(first.detach())
        evaluations = 1
        g = self._flat_grad()
        optimal = bool(g.abs().max() <= tolerance_grad)
        if optimal:
            return first
        for n in range(1, max_iter + 1):
            self._iterations += 1
            if self._history is None:
                self._history = History(group["history_size"], g)
                d = g.neg()
            else:
                y = g - self._prev_grad
                s = self._d * self._t
                ys = y.dot(s)
                if ys > MEMORY_MIN_CURVATURE:
                    self._history.add(s, y, ys)
                    self._gamma = ys / y.dot(y)
                d = self._history.direction(g, self._gamma)
            self._prev_grad = g.clone()
            prev_loss = loss
            t: torch.Tensor | float = (
                min(1.0, 1.0 / g.abs().sum()) * lr if self._iterations == 1 else lr
            )
            self._d, self._t = d, t
            if g.dot(d) > -tolerance_change:  # not a descent direction any more
                break
            self._move(t, d)
            if n == max_iter:
                break
            loss = float(evaluate().detach())
            evaluations += 1
            g = self._flat_grad()
            optimal = bool(g.abs().max() <= tolerance_grad)
            if (
                evaluations >= max_eval
                or optimal
                or (d * t).abs().max() <= tolerance_change
                or abs(loss - prev_loss) < tolerance_change
            ):
                break
        return first
