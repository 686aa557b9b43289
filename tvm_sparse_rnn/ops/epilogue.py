"""What a linear kernel applies to its float32 sums before it stores them.

``Y = activation(acc + bias).astype(out_dtype)``: the bias add, activation and cast that follow a
pruned ``nn.Linear`` in a model, applied in the kernel's store instead of in extra launches that
re-read ``Y`` (:class:`~tvm_sparse_rnn.transform.FuseLinearEpilogue` folds them into the linear
placeholder; kernels that do not apply an epilogue leave it to Relax ops after them).

GELU is the erf form torch exports (``0.5 x (1 + erf(x / sqrt 2))``), its ``erf`` the rational
approximation of TVM's ``topi.fast_erf`` (Eigen's), which
:class:`~tvm_sparse_rnn.transform.FastMath` gives the unfused op on llvm: a fused and an unfused
layer compute the same.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import scipy.special
from tvm import tirx

#: Dtype of the sums an epilogue is applied to.
ACC_DTYPE = "float32"
#: ``topi.fast_erf``'s float32 approximation: ``erf(x) ~ x P(x^2) / Q(x^2)`` on ``x`` clamped
#: to ``[-ERF_CLAMP, ERF_CLAMP]``; coefficients of ``P`` and ``Q`` from the highest power down.
ERF_CLAMP = 4.0
ERF_NUMERATOR = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
ERF_DENOMINATOR = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def fast_erf(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """``erf(x)`` of a float32 expression, vectorizable (no libm call), as ``topi.fast_erf``."""
    x = tirx.max(tirx.min(x, tirx.const(ERF_CLAMP, ACC_DTYPE)), tirx.const(-ERF_CLAMP, ACC_DTYPE))
    x2 = x * x

    def horner(coefficients: tuple[float, ...]) -> tirx.PrimExpr:
        value = tirx.const(coefficients[0], ACC_DTYPE)
        for c in coefficients[1:]:
            value = value * x2 + tirx.const(c, ACC_DTYPE)
        return value

    return x * horner(ERF_NUMERATOR) / horner(ERF_DENOMINATOR)


class Activation(enum.Enum):
    """Elementwise activation of an epilogue."""

    NONE = "none"
    RELU = "relu"
    #: ``0.5 x (1 + erf(x / sqrt 2))``, ``erf`` by :func:`fast_erf`.
    GELU = "gelu"

    def apply(self, value: tirx.PrimExpr) -> tirx.PrimExpr:
        """The activation of a float32 expression."""
        if self is Activation.RELU:
            return tirx.max(value, tirx.const(0, ACC_DTYPE))
        if self is Activation.GELU:
            half = tirx.const(0.5, ACC_DTYPE)
            erf = fast_erf(value * tirx.const(1 / math.sqrt(2), ACC_DTYPE))
            return value * half * (tirx.const(1, ACC_DTYPE) + erf)
        return value

    def reference(self, value: np.ndarray) -> np.ndarray:
        """The exact activation of a numpy array, for tests."""
        if self is Activation.RELU:
            return np.maximum(value, 0)
        if self is Activation.GELU:
            return 0.5 * value * (1 + scipy.special.erf(value / math.sqrt(2)))
        return value


@dataclass(frozen=True)
class Epilogue:
    """The static part of an epilogue (the bias values are a kernel argument).

    Attributes
    ----------
    bias : bool
        Add a ``(N,)`` bias, in the input's dtype, to every row.
    activation : Activation
        Applied after the bias.
    out_dtype : str or None
        Dtype of ``Y``; ``None``: the input's.
    """

    bias: bool = False
    activation: Activation = Activation.NONE
    out_dtype: str | None = None

    @property
    def is_identity(self) -> bool:
        """Whether the epilogue leaves the sums as they are (a cast aside)."""
        return not self.bias and self.activation is Activation.NONE

    def output_dtype(self, input_dtype: str) -> str:
        """Dtype of ``Y`` for an input of ``input_dtype``."""
        return self.out_dtype or input_dtype

    def describe(self) -> str:
        """A short text for dispatch decisions (``""`` for the identity in the input dtype)."""
        parts = ["bias"] if self.bias else []
        if self.activation is not Activation.NONE:
            parts.append(self.activation.value)
        text = " + ".join(parts)
        if self.out_dtype is not None:
            text = f"{text}, out {self.out_dtype}" if text else f"out {self.out_dtype}"
        return text

    def apply(
        self, acc: tirx.PrimExpr, bias: tirx.PrimExpr | None, input_dtype: str
    ) -> tirx.PrimExpr:
        """``activation(acc + bias)`` in float32, cast to the output dtype.

        Parameters
        ----------
        acc : tirx.PrimExpr
            A float32 sum.
        bias : tirx.PrimExpr or None
            The sum's bias element (input dtype); needed when :attr:`bias` is set.
        input_dtype : str
            Dtype of the kernel's ``X``.
        """
        value = acc
        if self.bias:
            value = value + bias.astype(ACC_DTYPE)
        value = self.activation.apply(value)
        out = self.output_dtype(input_dtype)
        return value if out == ACC_DTYPE else value.astype(out)

    def reference(self, y: np.ndarray, bias: np.ndarray | None, input_dtype: str) -> np.ndarray:
        """:meth:`apply` on a float64 (or float32) numpy result, for tests."""
        value = self.activation.reference(y + bias if self.bias else y)
        return value.astype(self.output_dtype(input_dtype))


#: No bias, no activation, the input's dtype.
IDENTITY = Epilogue()
