"""Element types: which param, gradient and state dtypes go together. The one owner of
these rules; validation, planning, the reference and the state dict all ask here.

A param is float32, float64, bfloat16 (``ml_dtypes.bfloat16``) or float16. Every step
computes in float32, or in float64 for float64 params. A bfloat16/float16 param has a
float32 master copy in its state (``master_param``): the step updates the master and
writes the param rounded from it (to nearest even) in the same pass. Its gradients may be
float32, bfloat16 or float16; other params take gradients of their own dtype. The moments
are stored in the compute type, or in bfloat16 with ``state_dtype="bfloat16"`` (float32
compute only).
"""

import ml_dtypes
import numpy as np

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT16 = np.dtype(np.float16)

PARAM_DTYPES = (FLOAT32, FLOAT64, BFLOAT16, FLOAT16)
LOW_PRECISION = (BFLOAT16, FLOAT16)
STATE_DTYPE_OPTIONS = (None, "float32", "bfloat16")
MASTER = "master_param"


def dtype_names(dtypes):
    return ", ".join(d.name for d in dtypes)


def has_master(param_dtype):
    """True when a param of this dtype keeps a float32 master copy."""
    return param_dtype in LOW_PRECISION


def compute_dtype(param_dtype):
    return FLOAT64 if param_dtype == FLOAT64 else FLOAT32


def grad_dtypes(param_dtype):
    """The gradient dtypes a param of this dtype takes."""
    if has_master(param_dtype):
        return (FLOAT32, BFLOAT16, FLOAT16)
    return (param_dtype,)


def state_dtype(param_dtype, option, pname):
    """The dtype of the moments of a param, for the group's ``state_dtype`` option."""
    compute = compute_dtype(param_dtype)
    if option is None:
        return compute
    if compute == FLOAT64:
        raise TypeError(
            f"state_dtype={option!r} applies to float32, bfloat16 and float16 params; "
            f"{pname} is float64 (its state is float64: use state_dtype=None)"
        )
    return FLOAT32 if option == "float32" else BFLOAT16
