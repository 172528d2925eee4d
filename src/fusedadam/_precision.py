"""Element types: which param, gradient and state dtypes go together. The one owner of
these rules; validation, planning, the reference and the state dict all ask here.

A param is float32, float64, bfloat16 (``ml_dtypes.bfloat16``) or float16. Every step
computes in float32, or in float64 for float64 params. A bfloat16/float16 param has a
float32 master copy in its state (``master_param``): the step updates the master and
writes the param rounded from it (to nearest even) in the same pass. With
``master="residual"`` a bfloat16 param keeps the master exactly in 16 bits instead
(``master_residual``, int16: ``_residual.h``), the param rounded to nearest with ties
away from zero; with ``master="compact"`` in 8 bits (``master_residual``, int8: the
residual's top byte, rounded; lossy, at most 128 float32 units in the last place off:
``_residual.h``). Its gradients may be float32, bfloat16 or float16; other params take
gradients of their own dtype. The moments are stored in the compute type, or in bfloat16
with ``state_dtype="bfloat16"`` (float32 compute only), or block-wise in 8 bits with
``state_dtype="8bit"`` (float32 compute only): each moment is a uint8 code array shaped
like the param plus a float32 array of one scale (the absmax of the block's finite
values; an inf or NaN keeps a code of its own) per block of ``Q8_BLOCK`` elements, named
``<moment>_absmax`` (``reference.q8_quantize`` is the map).
``state_dtype="8bit_companded"`` is the same layout with FlashOptim's companded linear
map instead (softsign for signed moments, square root for the others;
``reference.q8_quantize(..., companded=True)``); its code arrays are int8, which is how
a state (and a saved state dict) says which map its codes are in (the bytes are codes,
not numbers). Params of fewer than ``Q8_MIN_SIZE`` elements keep float32 moments, as
bitsandbytes keeps small tensors in 32 bits: their state is a few bytes, and 8-bit error
there would buy nothing.
"""

import ml_dtypes
import numpy as np

from fusedadam import _constants

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT16 = np.dtype(np.float16)

PARAM_DTYPES = (FLOAT32, FLOAT64, BFLOAT16, FLOAT16)
LOW_PRECISION = (BFLOAT16, FLOAT16)
UINT8 = np.dtype(np.uint8)
INT8 = np.dtype(np.int8)
INT16 = np.dtype(np.int16)
# the 8-bit state options and the dtype of their codes (one map per dtype)
Q8_CODE_DTYPES = {"8bit": UINT8, "8bit_companded": INT8}
Q8_DTYPES = tuple(Q8_CODE_DTYPES.values())
STATE_DTYPE_OPTIONS = (None, "float32", "bfloat16") + tuple(Q8_CODE_DTYPES)
MASTER = "master_param"
# master="residual": the master's low 16 bits (int16); master="compact": 8 of them (int8)
MASTER_RESIDUAL = "master_residual"
RESIDUAL_DTYPES = {"residual": INT16, "compact": INT8}
MASTER_OPTIONS = ("float32",) + tuple(RESIDUAL_DTYPES)
Q8_MIN_SIZE = 4096  # smaller params keep float32 moments under an 8-bit state_dtype
SCALE_SUFFIX = "_absmax"


def scale_name(name):
    """The name of the per-block scales of 8-bit state array ``name``."""
    return name + SCALE_SUFFIX


def state_shape(name, param):
    """The shape of state array ``name`` of ``param``: the param's, or one scale per block."""
    if name.endswith(SCALE_SUFFIX):
        return (-(-param.size // _constants.Q8_BLOCK),)
    return param.shape


def is_q8(dtype):
    """True when state of this dtype holds 8-bit codes (with per-block scales)."""
    return dtype in Q8_DTYPES


def is_companded(dtype):
    """True when 8-bit codes of this dtype are in the companded map."""
    return dtype == Q8_CODE_DTYPES["8bit_companded"]


def dtype_names(dtypes):
    return ", ".join(d.name for d in dtypes)


def has_master(param_dtype):
    """True when a param of this dtype keeps a float32 master copy."""
    return param_dtype in LOW_PRECISION


def master_entry(param_dtype, option, pname):
    """``(name, dtype)`` of the master a param of this dtype keeps under the group's
    ``master`` option, or None (float32/float64 params have no master: either option is
    theirs as is). ``"residual"`` (bfloat16 only) keeps the master as an int16 residual:
    the master is the param's bits shifted up 16 plus the residual, exactly
    (``reference.residual_encode``); ``"compact"`` (bfloat16 only) as an int8 one, the
    residual's top byte rounded (``reference.compact_encode``)."""
    if not has_master(param_dtype):
        return None
    if option in RESIDUAL_DTYPES:
        if param_dtype != BFLOAT16:
            raise TypeError(
                f"master={option!r} applies to bfloat16 params; {pname} is {param_dtype} "
                "(a float32 master is not a float16 plus more low bits: float16 has a "
                "10-bit mantissa and a narrower exponent range): use master='float32'"
            )
        return MASTER_RESIDUAL, RESIDUAL_DTYPES[option]
    return MASTER, FLOAT32


def compute_dtype(param_dtype):
    return FLOAT64 if param_dtype == FLOAT64 else FLOAT32


def grad_dtypes(param_dtype):
    """The gradient dtypes a param of this dtype takes."""
    if has_master(param_dtype):
        return (FLOAT32, BFLOAT16, FLOAT16)
    return (param_dtype,)


def state_dtype(param_dtype, option, pname, size=Q8_MIN_SIZE):
    """The dtype of the moments of a param of ``size`` elements, for the group's
    ``state_dtype`` option (uint8 or int8: 8-bit codes with per-block scales)."""
    compute = compute_dtype(param_dtype)
    if option is None:
        return compute
    if compute == FLOAT64:
        raise TypeError(
            f"state_dtype={option!r} applies to float32, bfloat16 and float16 params; "
            f"{pname} is float64 (its state is float64: use state_dtype=None)"
        )
    if option in Q8_CODE_DTYPES:
        return Q8_CODE_DTYPES[option] if size >= Q8_MIN_SIZE else FLOAT32
    return FLOAT32 if option == "float32" else BFLOAT16


def __getattr__(name):
    # Q8_BLOCK, as code written against this module spells it: the extension's number
    # (fusedadam._constants owns it; read on use, not at import).
    if name == "Q8_BLOCK":
        return _constants.Q8_BLOCK
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
