"""What a linear kernel applies to its float32 sums before it stores them.

``Y = activation(acc + bias).astype(out_dtype)``: the bias add, activation and cast that follow a
pruned ``nn.Linear`` in a model, applied in the kernel's store instead of in extra launches that
re-read ``Y`` (:class:`~tvm_sparse_rnn.transform.FuseLinearEpilogue` folds them into the linear
placeholder; kernels that do not apply an epilogue leave it to Relax ops after them).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from tvm import tirx

#: Dtype of the sums an epilogue is applied to.
ACC_DTYPE = "float32"


class Activation(enum.Enum):
    """Elementwise activation of an epilogue."""

    NONE = "none"
    RELU = "relu"


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
        if self.activation is Activation.RELU:
            value = tirx.max(value, tirx.const(0, ACC_DTYPE))
        out = self.output_dtype(input_dtype)
        return value if out == ACC_DTYPE else value.astype(out)

    def reference(self, y: np.ndarray, bias: np.ndarray | None, input_dtype: str) -> np.ndarray:
        """:meth:`apply` on a float64 (or float32) numpy result, for tests."""
        value = y + bias if self.bias else y
        if self.activation is Activation.RELU:
            value = np.maximum(value, 0)
        return value.astype(self.output_dtype(input_dtype))


#: No bias, no activation, the input's dtype.
IDENTITY = Epilogue()
