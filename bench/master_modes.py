"""The storage modes (param dtype, master, moments) the convergence and speed runs compare.

A mode is how a parameter and its optimizer state are stored: the param's dtype, the
``master=`` option (for bfloat16 params) and the ``state_dtype=`` of the moments. Both
``bench/convergence.py`` and ``bench/master_speed.py`` take their modes from ``MODES``;
a new master or state mode is one line here (and one in ``BYTES_MASTER`` or
``BYTES_STATE``).

Bytes per element of an AdamW step (what it must read + write, no write-allocate),
bfloat16 gradients for bfloat16 params, float32 gradients for float32 params:

    param + master:  float32 param (no master) read 4, write 4         = 8
                     bf16 + float32 master: read master 4, write master 4, write p 2 = 10
                     bf16 + residual: read p 2, r 2, write p 2, r 2     = 8
                     bf16 + compact: read p 2, c 1, write p 2, c 1      = 6
    moments:         float32 16, bfloat16 8, 8-bit (either map) 4 + 16/256 (two float32
                     scales per 256 elements, read and written)
    gradient:        its dtype's size
"""

from dataclasses import dataclass
from typing import Optional

__all__ = ["Mode", "MODES", "BYTES_MASTER", "BYTES_STATE", "step_bytes", "stored_bytes"]


@dataclass(frozen=True)
class Mode:
    """One storage mode: ``param`` dtype name, ``master`` option, ``state_dtype`` option.

    ``master`` is None for float32 params (they have no master). ``control`` marks the
    negative control: bfloat16 params stepped with no master at all (the float32 result
    rounded back to bfloat16 after every step), to show a task can tell modes apart.
    """

    param: str
    master: Optional[str] = None
    state_dtype: Optional[str] = None
    control: bool = False

    @property
    def options(self):
        """Keyword arguments of the fusedadam optimizer for this mode."""
        options = {}
        if self.master is not None:
            options["master"] = self.master
        if self.state_dtype is not None:
            options["state_dtype"] = self.state_dtype
        return options


MODES = {
    "float32": Mode("float32"),
    "float32, 8-bit": Mode("float32", state_dtype="8bit"),
    "bf16 + f32 master": Mode("bfloat16", "float32"),
    "bf16 + f32 master, 8-bit": Mode("bfloat16", "float32", "8bit"),
    "bf16 + residual": Mode("bfloat16", "residual"),
    "bf16 + residual, 8-bit": Mode("bfloat16", "residual", "8bit"),
    "bf16 + f32 master, companded 8-bit": Mode("bfloat16", "float32", "8bit_companded"),
    "bf16 + compact": Mode("bfloat16", "compact"),
    "bf16 + compact, 8-bit": Mode("bfloat16", "compact", "8bit"),
    "bf16 + compact, companded 8-bit": Mode("bfloat16", "compact", "8bit_companded"),
    "bf16, no master": Mode("bfloat16", state_dtype=None, control=True),
}

# Every residual mode's twin: the same step with the float32 master, whose master
# trajectory the residual one must reproduce bit for bit.
EXACT_TWIN = {
    name: next(
        other
        for other, o in MODES.items()
        if o.param == m.param and o.master == "float32" and o.state_dtype == m.state_dtype
    )
    for name, m in MODES.items()
    if m.master == "residual"
}

Q8 = 4.0 + 16 / 256  # two moments' 1-byte codes, read and written, + their float32 scales
BYTES_MASTER = {None: 8.0, "float32": 10.0, "residual": 8.0, "compact": 6.0}  # param + master
BYTES_STATE = {None: 16.0, "bfloat16": 8.0, "8bit": Q8, "8bit_companded": Q8}  # two moments
STORED_MASTER = {None: 4.0, "float32": 6.0, "residual": 4.0, "compact": 3.0}  # bytes kept
STORED_STATE = {None: 8.0, "bfloat16": 4.0, "8bit": Q8 / 2, "8bit_companded": Q8 / 2}


def step_bytes(mode):
    """Bytes an AdamW step of ``mode`` moves per element (model above)."""
    grad = 4.0 if mode.param == "float32" else 2.0
    master = BYTES_MASTER[None if mode.param == "float32" else mode.master]
    return master + grad + BYTES_STATE[mode.state_dtype]


def stored_bytes(mode):
    """Bytes per parameter the param and its optimizer state keep (gradients not counted)."""
    master = STORED_MASTER[None if mode.param == "float32" else mode.master]
    return master + STORED_STATE[mode.state_dtype]
