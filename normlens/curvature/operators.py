"""Hessian and Gauss-Newton products of a loss, as operators that only know ``@``.

``HessianOperator(model, data) @ v`` returns H v for a flat vector v (or each
column of an (n, m) matrix), where H is the Hessian of the (sample-weighted)
average loss over ``data`` with respect to a chosen subset of parameters:

    L(theta) = sum_b w_b L_b(theta) / sum_b w_b,     H v = sum_b w_b H_b v / sum_b w_b.

Two ways to compute H_b v (both exact):

* double backward:       H v = grad_theta (grad_theta L . v)   (Pearlmutter 1994)
* forward-over-reverse:  H v = jvp(grad L, theta, v)           (torch.func)

``method="auto"`` times both on the first batch and keeps the faster.

``GGNOperator`` gives the generalized Gauss-Newton product G v = J^T H_z J v with
J the Jacobian of the model outputs z and H_z the Hessian of the loss in z
(Schraudolph 2002); for cross-entropy H_z is positive semi-definite, so G is.

The model is never modified: products run on detached copies of the parameters
put in every slot that holds them (:func:`normlens.parameters.swapped_parameters`;
``torch.func.functional_call`` missed the tied unembedding of a GPT-2 bridge), in
eval mode, with the RNG state restored and the original Parameters put back.

Parameters: by default every trainable parameter that the forward uses. Those
that receive no gradient (a TransformerLens bridge of Hugging Face GPT-2 keeps
unused fused ``qkv`` copies, 21 M of GPT-2 small's parameters) are found once
with one backward on one example (:func:`normlens.parameters.find_unused_parameters`)
and left out; ``op.excluded`` says so in one line. Weights with NaN/inf are
refused before any work.

Attention: the operator's own passes run with ``F.scaled_dot_product_attention``
on its math backend (``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``): the
fused CPU and flash kernels have no second derivative, the math one is exact.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
from torch.func import grad, jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

from normlens.losses import logits_loss, model_logits, next_token_loss
from normlens.parameters import (
    ParamInfo,
    ParamSelector,
    check_finite_weights,
    describe_exclusion,
    drop_unused,
    find_unused_parameters,
    parameter_slots,
    select_parameters,
    swapped_parameters,
)
from normlens.hygiene import check_train_mode, eval_mode, rng_preserved
from normlens.curvature.results import unflatten

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]

METHODS = ("auto", "double_backward", "forward_over_reverse")


# -------------------------------------------------------------- batches

def _as_batches(data: Any) -> list[Batch]:
    """One batch (a tensor, tuple or dict) or a list/loader of batches -> a list.

    A loader is read once and kept, so every product sees the same batches
    (a shuffling loader would otherwise change the matrix between products).
    """
    if isinstance(data, (torch.Tensor, tuple, dict)):
        return [data]
    if isinstance(data, Iterable):
        batches = list(data)
        if not batches:
            raise ValueError("data holds no batches; pass a batch or a non-empty list/loader")
        return batches
    raise TypeError(
        f"data must be a batch (tensor/tuple/dict) or an iterable of batches, got {type(data).__name__}"
    )


def _batch_size(batch: Batch) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (tuple, list)) and batch:
        return _batch_size(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_size(next(iter(batch.values())))
    raise ValueError(f"cannot tell the size of a batch of type {type(batch).__name__}; pass weights=")


def _batch_weights(batches: list[Batch], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [float(_batch_size(b)) for b in batches]
    weights = [float(w) for w in weights]
    if len(weights) != len(batches):
        raise ValueError(f"got {len(weights)} weights for {len(batches)} batches; give one per batch")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    return weights


class NonFiniteLossError(FloatingPointError, ValueError):
    """The loss is NaN or inf (bad input: a diverged model or NaN data)."""


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """``scaled_dot_product_attention`` on its math backend, which has exact higher derivatives."""
    with sdpa_kernel(SDPBackend.MATH):
        yield


# -------------------------------------------------------------- operators

class CurvatureOperator:
    """Shared plumbing: parameters, batches, weights, flattening, hygiene.

    Subclasses implement ``_batch_products(batch, vectors) -> (m, n)``. The
    parameters are copied when the operator is built: it is the curvature at
    those weights even if the model changes later.
    Attributes: ``shape`` (n, n), ``dtype``, ``device``, ``param_names``,
    ``param_shapes``, ``n_matvecs`` (products so far, per vector),
    ``excluded`` (one line naming the parameters left out because the forward
    does not use them; "" if none) and ``excluded_parameters`` (their ParamInfo).
    """

    accepts_blocks = True  # ``op @ V`` takes an (n, m) block: each batch's forward runs once for it

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        params: ParamSelector = None,
        weights: Sequence[float] | None = None,
        train_mode: str = "eval",
        usage_loss_fn: LossFn,
        unused: Sequence[ParamInfo] | None = None,
    ):
        check_train_mode(model, train_mode)
        self.model = model
        self.batches = _as_batches(data)
        self.weights = _batch_weights(self.batches, weights)
        selected = select_parameters(model, params)
        check_finite_weights(model)
        if unused is None:
            unused = find_unused_parameters(model, self.batches[0], usage_loss_fn)
        self.selected, dropped = drop_unused(selected, unused, params)
        self.excluded_parameters = tuple(dropped)
        self.excluded = describe_exclusion(dropped)
        by_key = dict(model.named_parameters())
        self._selected_keys = [info.key for info in self.selected]
        selected = set(self._selected_keys)
        # A snapshot: the operator is the curvature at the weights it was built at,
        # whatever happens to the model afterwards.
        self._frozen = {key: p.detach().clone() for key, p in by_key.items() if key not in selected}
        self._slots = parameter_slots(model)
        self._theta = [by_key[key].detach().clone() for key in self._selected_keys]
        dtypes = {t.dtype for t in self._theta}
        if len(dtypes) != 1:
            raise TypeError(
                f"selected parameters mix dtypes {sorted(map(str, dtypes))}; cast the model first"
            )
        self.dtype = self._theta[0].dtype
        self.device = self._theta[0].device
        self.param_names = tuple(info.name for info in self.selected)
        self.param_shapes = tuple(info.shape for info in self.selected)
        self._sizes = [t.numel() for t in self._theta]
        n = sum(self._sizes)
        self.shape = (n, n)
        self.n_matvecs = 0

    # -- flat <-> parameter-shaped
    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """(n,) -> {parameter name: tensor of that parameter's shape}."""
        return unflatten(vector, self.param_names, self.param_shapes)

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def _split(self, vector: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(c.view(t.shape) for c, t in zip(vector.split(self._sizes), self._theta))

    def _call(self, fn: Callable, theta: Sequence[torch.Tensor], batch: Batch) -> torch.Tensor:
        """fn(model with parameters ``theta``, batch), the other parameters frozen; math attention."""
        overrides = dict(self._frozen)
        overrides.update(zip(self._selected_keys, theta))
        with swapped_parameters(self._slots, overrides), math_attention():
            return fn(self.model, batch)

    @staticmethod
    def _check_loss(loss: Any, index: int) -> None:
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__}")
        if loss.dim() != 0:
            raise ValueError(
                f"loss_fn must return a scalar (mean) loss, got shape {tuple(loss.shape)}; "
                "reduce it with .mean() or reduction='mean'"
            )
        if not torch.isfinite(loss.detach()).item():
            raise NonFiniteLossError(
                f"the loss is {loss.item()} on batch {index}; the model or data hold NaN/inf "
                "(a diverged model has no meaningful curvature)"
            )

    # -- products
    def weighted_sum(self, vectors: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(sum_b w_b A_b V, sum_b w_b) for V (n,) or (n, m); the distributed building block."""
        n = self.shape[0]
        if not isinstance(vectors, torch.Tensor):
            raise TypeError(f"an operator multiplies a torch.Tensor, got {type(vectors).__name__}")
        if vectors.dim() not in (1, 2) or vectors.shape[0] != n:
            raise ValueError(f"expected a vector of shape ({n},) or ({n}, m), got {tuple(vectors.shape)}")
        columns = vectors.reshape(n, -1).T.to(self.dtype, copy=False)  # (m, n)
        total = None
        with eval_mode(self.model), rng_preserved(self.device):
            for index, (batch, weight) in enumerate(zip(self.batches, self.weights)):
                if weight == 0:
                    continue
                products = self._batch_products(batch, columns, index)  # (m, n)
                if total is None:
                    total = products.mul_(weight)
                else:
                    total.add_(products, alpha=weight)
                del products
        self.n_matvecs += columns.shape[0]
        return total.T.reshape(vectors.shape), sum(self.weights)

    def __matmul__(self, vectors: torch.Tensor) -> torch.Tensor:
        total, weight = self.weighted_sum(vectors)
        return total.div_(weight)

    def _batch_products(self, batch: Batch, columns: torch.Tensor, index: int) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.shape[0]}, params={len(self.param_names)}, "
            f"batches={len(self.batches)}, dtype={self.dtype})"
        )


class HessianOperator(CurvatureOperator):
    """Hessian-vector products of the weighted mean loss over ``data``.

    Args:
        model: any nn.Module; left unchanged.
        data: one batch, or a list/loader of batches (read once and kept).
        loss_fn: ``loss_fn(model, batch) -> scalar``; default: mean next-token
            cross-entropy of (batch, pos) int64 tokens.
        params: parameter subset, see :func:`select_parameters`.
        weights: one weight per batch (default: batch sizes, i.e. the mean over samples).
        method: "auto", "double_backward" or "forward_over_reverse".
        train_mode: "eval" (switch dropout/BatchNorm off, warn) or "refuse".
        keep_graph: keep the gradient's autograd graph between double-backward
            products when ``data`` is one batch (default), so each product costs
            one backward pass instead of forward + two backwards; ignored for
            several batches. The graph is built (and the loss checked) by the
            constructor's single forward.
        unused: the parameters the forward does not use, if already known (from
            :func:`~normlens.parameters.find_unused_parameters`); default: found
            with one backward on the first example of the first batch.

    Raises (before any product): :class:`~normlens.parameters.NonFiniteWeightsError`
    for NaN/inf weights, :class:`NonFiniteLossError` for a NaN/inf loss,
    :class:`~normlens.parameters.UnusedParameterError` when ``params`` asks only
    for (or names) parameters the forward does not use.

    >>> lin = nn.Linear(2, 1, bias=False)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> op = HessianOperator(lin, x, loss_fn=lambda m, b: m(b).pow(2).sum() / 2,
    ...                      method="double_backward")
    >>> op @ torch.tensor([1.0, 1.0])   # H = x^T x = diag(1, 4)
    tensor([1., 4.])
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        loss_fn: LossFn | None = None,
        *,
        params: ParamSelector = None,
        weights: Sequence[float] | None = None,
        method: str = "auto",
        train_mode: str = "eval",
        keep_graph: bool | None = None,
        unused: Sequence[ParamInfo] | None = None,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.loss_fn = loss_fn or next_token_loss
        super().__init__(model, data, params=params, weights=weights, train_mode=train_mode,
                         usage_loss_fn=self.loss_fn, unused=unused)
        self.method = method
        # One batch: keep the gradient's graph, so a product is one backward pass
        # (the graph holds the activations; pass keep_graph=False to save memory).
        self.keep_graph = len(self.batches) == 1 and (keep_graph is None or bool(keep_graph))
        self._graph = None
        with eval_mode(model), rng_preserved(self.device):
            if self.keep_graph and method != "forward_over_reverse":
                # one forward: it checks the loss and its graph serves every product
                self.method = "double_backward"
                self._gradient_graph(self.batches[0], 0)
            else:
                with torch.no_grad():
                    self._check_loss(self._call(self.loss_fn, self._theta, self.batches[0]), 0)

    def loss(self) -> float:
        """The weighted mean loss over the data."""
        with torch.no_grad(), eval_mode(self.model), rng_preserved(self.device):
            values = [float(self._call(self.loss_fn, self._theta, b)) for b in self.batches]
        return sum(w * v for w, v in zip(self.weights, values)) / sum(self.weights)

    def gradient(self) -> torch.Tensor:
        """The flat (n,) gradient of the weighted mean loss (the reference cost of the benchmark)."""
        total = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        with eval_mode(self.model), rng_preserved(self.device):
            for index, (batch, weight) in enumerate(zip(self.batches, self.weights)):
                theta = [t.clone().requires_grad_(True) for t in self._theta]
                loss = self._call(self.loss_fn, theta, batch)
                self._check_loss(loss, index)
                total += weight * self.flatten(torch.autograd.grad(loss, theta))
        return total / sum(self.weights)

    def _batch_products(self, batch: Batch, columns: torch.Tensor, index: int) -> torch.Tensor:
        if self.method == "auto":
            self.method = self._pick_method(batch, columns[:1], index)
        if self.method == "double_backward":
            return self._double_backward(batch, columns, index)
        return self._forward_over_reverse(batch, columns, index)

    def _gradient_graph(self, batch: Batch, index: int) -> tuple[list[torch.Tensor], tuple]:
        """(theta leaves, gradient with its graph); kept between products for a single batch."""
        if self._graph is not None:
            return self._graph
        theta = [t.clone().requires_grad_(True) for t in self._theta]
        loss = self._call(self.loss_fn, theta, batch)
        self._check_loss(loss, index)
        graph = (theta, torch.autograd.grad(loss, theta, create_graph=True))
        if self.keep_graph:
            self._graph = graph
        return graph

    def _double_backward(self, batch: Batch, columns: torch.Tensor, index: int) -> torch.Tensor:
        theta, grads = self._gradient_graph(batch, index)
        out = torch.empty_like(columns)
        for j, column in enumerate(columns):  # one backward per vector, graph reused
            dot = sum((g * v).sum() for g, v in zip(grads, self._split(column)))
            hv = torch.autograd.grad(
                dot, theta, retain_graph=self.keep_graph or j + 1 < len(columns), allow_unused=True
            )
            torch.cat([(torch.zeros_like(t) if h is None else h).reshape(-1) for h, t in zip(hv, theta)],
                      out=out[j])
            del hv
        return out

    def _forward_over_reverse(self, batch: Batch, columns: torch.Tensor, index: int) -> torch.Tensor:
        def loss_of(theta: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
            loss = self._call(self.loss_fn, theta, batch)
            return loss, loss.detach()

        grad_fn = grad(loss_of, has_aux=True)
        out = torch.empty_like(columns)
        theta = tuple(self._theta)
        for j, column in enumerate(columns):
            _, hv, loss = jvp(grad_fn, (theta,), (self._split(column),), has_aux=True)
            if j == 0:
                self._check_loss(loss, index)
            out[j] = self.flatten(hv)
        return out

    def _pick_method(self, batch: Batch, column: torch.Tensor, index: int) -> str:
        """Time both methods on one batch (after a warm-up each); keep the faster.

        With one batch and a kept graph a double-backward product is a single
        backward pass, which forward-over-reverse (a forward and a backward
        pass under jvp) cannot beat, so no timing is done then.
        """
        if self.keep_graph:
            return "double_backward"
        timings = {}
        for method, fn in (
            ("double_backward", self._double_backward),
            ("forward_over_reverse", self._forward_over_reverse),
        ):
            try:
                fn(batch, column, index)  # warm-up
                start = time.perf_counter()
                fn(batch, column, index)
                timings[method] = time.perf_counter() - start
            except (FloatingPointError, ValueError, TypeError):
                raise
            except Exception:  # torch.func cannot trace this model: fall back
                continue
        if not timings:
            raise RuntimeError("neither double backward nor torch.func could differentiate this loss")
        return min(timings, key=timings.get)


class GGNOperator(CurvatureOperator):
    """Generalized Gauss-Newton products G v = J^T H_z J v (Schraudolph 2002).

    z = output_fn(model, batch) are the model outputs (logits), J = dz/dtheta,
    H_z the Hessian of ``output_loss_fn(z, batch)`` in z. For cross-entropy on
    logits H_z = diag(p) - p p^T per token (PSD), so G is PSD.

    Args:
        output_fn: ``(model, batch) -> outputs``; default: LM logits of tokens.
        output_loss_fn: ``(outputs, batch) -> scalar``; default: next-token CE.
        Other arguments as :class:`HessianOperator`.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        output_fn: Callable[[nn.Module, Batch], torch.Tensor] | None = None,
        output_loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor] | None = None,
        *,
        params: ParamSelector = None,
        weights: Sequence[float] | None = None,
        train_mode: str = "eval",
        unused: Sequence[ParamInfo] | None = None,
    ):
        self.output_fn = output_fn or model_logits
        self.output_loss_fn = output_loss_fn or logits_loss
        super().__init__(model, data, params=params, weights=weights, train_mode=train_mode,
                         usage_loss_fn=lambda m, b: self.output_loss_fn(self.output_fn(m, b), b),
                         unused=unused)
        self.method = "ggn"
        with torch.no_grad(), eval_mode(model), rng_preserved(self.device):
            outputs = self._call(self.output_fn, self._theta, self.batches[0])
            self._check_loss(self.output_loss_fn(outputs, self.batches[0]), 0)

    def _batch_products(self, batch: Batch, columns: torch.Tensor, index: int) -> torch.Tensor:
        def outputs_of(*theta: torch.Tensor) -> torch.Tensor:
            return self._call(self.output_fn, theta, batch)

        def loss_of(outputs: torch.Tensor) -> torch.Tensor:
            return self.output_loss_fn(outputs, batch)

        theta = tuple(self._theta)
        outputs, pullback = vjp(outputs_of, *theta)  # outputs: model output shape
        self._check_loss(loss_of(outputs.detach()), index)
        out = torch.empty_like(columns)
        for j, column in enumerate(columns):
            _, jv = jvp(outputs_of, theta, self._split(column))  # J v, outputs' shape
            _, hjv = jvp(grad(loss_of), (outputs.detach(),), (jv,))  # H_z J v
            out[j] = self.flatten(pullback(hjv))  # J^T H_z J v
        return out


def as_operator(matrix_or_operator: Any) -> Any:
    """Validate that the input is a square tensor or has ``shape`` and ``@``; return it."""
    if isinstance(matrix_or_operator, torch.Tensor):
        if matrix_or_operator.dim() != 2 or matrix_or_operator.shape[0] != matrix_or_operator.shape[1]:
            raise ValueError(f"expected a square (n, n) matrix, got shape {tuple(matrix_or_operator.shape)}")
        return matrix_or_operator
    shape = getattr(matrix_or_operator, "shape", None)
    square = shape is not None and len(shape) == 2 and shape[0] == shape[1]
    if not square or not hasattr(matrix_or_operator, "__matmul__"):
        raise TypeError(
            f"expected a square tensor or an operator with shape (n, n) and @, got "
            f"{type(matrix_or_operator).__name__}"
        )
    return matrix_or_operator
