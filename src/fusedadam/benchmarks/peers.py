"""The implementations a benchmark times, all in one process: fusedadam and its peers.

``ALGORITHMS`` is the data the whole benchmark is driven by: one line per algorithm says
which fusedadam class and options run it, how many arrays a step moves, and what the peers
call it. Every optimizer class of the registry (``_algorithms.CLASSES``) has one: those
without a line below get one under their functional name, with the arrays their state
moves and, as their reference peer, the torch optimizer the registry says they follow. A
peer that is not importable, or has no such algorithm, is skipped with a note, never an
error.

Implementations (``IMPLS``):

fusedadam         ``fa.<Class>(..., backend="compiled").step(grads)``, end to end
fusedadam-kernel  the compiled call inside it alone (see :mod:`.roofline`)
numpy             the same optimizer with ``backend="numpy"`` (the reference twin)
roofline          the bandwidth probe: the step's memory traffic in the step's passes,
                  trivial arithmetic
torch-single, torch-foreach, torch-fused
                  ``torch.optim.<Class>`` with ``foreach=False`` / ``foreach=True`` /
                  ``fused=True``, gradients sharing the NumPy arrays' memory
deepspeed         ``deepspeed.ops.adam.DeepSpeedCPUAdam`` (Adam and AdamW)
reference         the algorithm in the package fusedadam follows for it (``schedulefree``,
                  ``timm``, ``pytorch_optimizer``, ``optimi``), a torch optimizer stepped as
                  its users step it
"""

import contextlib
import importlib
import importlib.util
import io
import os
import sys
import types
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from fusedadam import _algorithms
from fusedadam.benchmarks import roofline

__all__ = [
    "Algorithm",
    "ALGORITHMS",
    "IMPLS",
    "PEERS",
    "build",
    "import_reference",
    "probe_shape",
    "peer_versions",
    "skipped",
]

LR, WEIGHT_DECAY = 1e-3, 1e-2


@dataclass(frozen=True)
class Algorithm:
    """How each implementation runs one algorithm.

    Attributes
    ----------
    fa_class : str
        Name of the fusedadam class (``fa.Adam``...); missing names are skipped.
    options : dict
        Keyword arguments of both the fusedadam and the torch class (``amsgrad=True``).
    arrays_moved : int
        Arrays read plus arrays written per element of a step (p, g, m, v in; p, m, v
        out is 7): the compulsory traffic GB/s is computed from. 0, the default: the passes'
        arrays from the registry, 2k + 3 for the k state arrays of the class with these
        options (the read-write pass) plus ``read_pass_arrays``; one more is added for the
        gradient read of the non-finite check that runs before any write (``nonfinite``
        other than ``"ignore"``, the default).
    read_pass_arrays : int
        Arrays read by a pass that writes nothing, counted in ``arrays_moved`` (a per-tensor
        kind's phase 1 on a tensor larger than a piece: LAMB reads p, g, m, v); 0: none.
    read_passes : tuple of int
        Set from the above: the arrays of each read-only pass, in the step's order (the
        check's scan of g: 1; then the phase 1). The roofline probe runs a read-only probe
        pass over as many arrays for each, then moves the rest (``arrays_moved`` minus
        these: 2k + 3 for k state arrays; an even count is scaled from the odd one below
        it, see ``probe_shape``) in one pass that reads and writes: one core streams reads
        alone more slowly than reads with writes, so a pass that only reads is timed as one.
    torch_class : str or None
        Name in ``torch.optim``; None: no torch peer.
    deepspeed : dict or None
        ``DeepSpeedCPUAdam`` keyword arguments; None: no DeepSpeed peer.
    reference : str or None
        ``"module:Class"`` of the torch optimizer in the package fusedadam's implementation
        follows (``"schedulefree:AdamWScheduleFree"``); None: no reference peer.
    reference_options : dict
        Its keyword arguments besides ``lr`` where they are spelt unlike fusedadam's.
    """

    fa_class: str
    options: dict = field(default_factory=dict)
    arrays_moved: int = 0
    read_pass_arrays: int = 0
    torch_class: Optional[str] = None
    deepspeed: Optional[dict] = None
    reference: Optional[str] = None
    reference_options: dict = field(default_factory=dict)
    read_passes: tuple = field(init=False, default=())

    def __post_init__(self):
        arrays = self.arrays_moved or (
            _one_pass_arrays(self.fa_class, self.options) + self.read_pass_arrays
        )
        # the default step reads g once more, to check it before anything is written
        checked = self.options.get("nonfinite", "error") != "ignore"
        object.__setattr__(self, "arrays_moved", arrays + checked)
        passes = (1,) * checked + ((self.read_pass_arrays,) if self.read_pass_arrays else ())
        object.__setattr__(self, "read_passes", passes)

    @property
    def write_pass_arrays(self):
        """The arrays of the pass that reads and writes (the probe's ``2k + 3``)."""
        return self.arrays_moved - sum(self.read_passes)


def _one_pass_arrays(fa_class, options):
    """p, g and the k state arrays read, p and the k state arrays written: 2k + 3."""
    entry = _algorithms.DEFAULTS.get(fa_class)
    if entry is None:  # not a class of this version (the benchmark skips it)
        return 7
    return 2 * len(_algorithms.ALGORITHMS[entry[0]].slot_names(options)) + 3


ALGORITHMS = {
    "adam": Algorithm("Adam", torch_class="Adam", deepspeed={"adamw_mode": False}),
    "adamw": Algorithm(
        "AdamW",
        {"weight_decay": WEIGHT_DECAY},
        torch_class="AdamW",
        deepspeed={"adamw_mode": True, "weight_decay": WEIGHT_DECAY},
    ),
    "amsgrad": Algorithm("Adam", {"amsgrad": True}, torch_class="Adam"),
    "adamax": Algorithm("Adamax", torch_class="Adamax"),
    "nadam": Algorithm("NAdam", torch_class="NAdam"),
    "radam": Algorithm("RAdam", torch_class="RAdam"),
    "adabelief": Algorithm("AdaBelief"),
    "lion": Algorithm("Lion"),
    # per-tensor kinds on a tensor larger than a piece (16384 elements): phase 1 reads (the
    # arrays its sum needs: LAMB p, g, m, v; StableAdamW g, v; cautious g, m), then phase 2
    # reads and writes (docs/algorithms_per_tensor.md; smaller tensors move the second only)
    "lamb": Algorithm("Lamb", read_pass_arrays=4, reference="timm.optim.lamb:Lamb"),
    "stableadamw": Algorithm("StableAdamW", read_pass_arrays=2, reference="optimi:StableAdamW"),
    "cautious_adamw": Algorithm(
        "AdamW",
        {"weight_decay": WEIGHT_DECAY, "cautious": True},
        read_pass_arrays=2,
        reference="timm.optim.adamw:AdamWLegacy",
        reference_options={"weight_decay": WEIGHT_DECAY, "caution": True},
    ),
    "cautious_lion": Algorithm(
        "Lion",
        {"cautious": True},
        read_pass_arrays=2,
        reference="timm.optim.lion:Lion",
        reference_options={"caution": True},
    ),
    "adamw_schedulefree": Algorithm(
        "AdamWScheduleFree", reference="schedulefree:AdamWScheduleFree"
    ),
    "radam_schedulefree": Algorithm(
        "RAdamScheduleFree", reference="schedulefree:RAdamScheduleFree"
    ),
}
# Every other class of the registry, under its functional name, with its defaults: fusedadam,
# its NumPy twin, the roofline, and as the reference the torch optimizer the class follows
# (the registry's ``torch.follows``) where that is not torch.optim's.
for _name, _entry in _algorithms.CLASSES.items():
    if not any(algorithm.fa_class == _name for algorithm in ALGORITHMS.values()):
        _follows = _entry.torch.follows
        _peer = None if _follows.startswith("torch.optim:") else _follows
        ALGORITHMS[_entry.function] = Algorithm(_name, reference=_peer)

PEERS = ("numpy", "torch-single", "torch-foreach", "torch-fused", "deepspeed", "reference")
IMPLS = ("fusedadam", "fusedadam-kernel", "roofline") + PEERS


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _import_deepspeed():
    try:
        # deepspeed prints accelerator detection on import; keep the table readable.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception:  # ImportError, or deepspeed failing to find an accelerator
        return None
    return DeepSpeedCPUAdam


def peer_versions():
    """Versions of the peer libraries that import here (None for those that do not)."""
    torch = _import_torch()
    versions = {"torch": getattr(torch, "__version__", None), "deepspeed": None}
    if _import_deepspeed() is not None:
        import deepspeed

        versions["deepspeed"] = deepspeed.__version__
    return versions


def _optimizer(algorithm, params, n_threads, backend):
    import fusedadam as fa

    cls = getattr(fa, algorithm.fa_class, None)
    if cls is None:
        raise RuntimeError(f"fusedadam has no {algorithm.fa_class}")
    return cls(params, lr=LR, num_threads=n_threads, backend=backend, **algorithm.options)


def _fusedadam(algorithm, params, grads, n_threads, backend):
    opt = _optimizer(algorithm, params, n_threads, backend)
    return lambda: opt.step(grads)


def _torch(variant, algorithm, params, grads, n_threads):
    torch = _import_torch()
    if torch is None:
        raise RuntimeError("torch is not importable")
    cls = getattr(torch.optim, algorithm.torch_class or "", None)
    if cls is None:
        raise RuntimeError(f"torch.optim has no {algorithm.torch_class or 'such optimizer'}")
    torch.set_num_threads(n_threads)
    tensors = _torch_params(torch, params, grads)
    flags = {
        "torch-single": {"foreach": False},
        "torch-foreach": {"foreach": True},
        "torch-fused": {"fused": True},
    }[variant]
    opt = cls(tensors, lr=LR, **algorithm.options, **flags)
    opt.step()  # raises here when torch lacks the variant (e.g. fused Adamax on CPU)
    return opt.step


def _torch_params(torch, params, grads):
    """Parameters sharing the NumPy arrays' memory, their grads set: no copy when timed."""
    tensors = []
    for p, g in zip(params, grads):
        t = torch.nn.Parameter(torch.from_numpy(p))
        t.grad = torch.from_numpy(g)
        tensors.append(t)
    return tensors


def probe_shape(arrays_moved):
    """``(k, scale)``: the probe moves p, g and k states in and p and the k states out (2k + 3
    arrays); an algorithm moving an even count (a per-tensor one's two passes: 10) is timed
    against the probe of the count below it, its time scaled by ``scale`` = the ratio of the
    two counts (the same bandwidth at its own bytes)."""
    if arrays_moved < 5:
        raise RuntimeError(f"the probe moves at least 5 arrays, not {arrays_moved}")
    states = (arrays_moved - 3) // 2
    return states, arrays_moved / (2 * states + 3)


def import_reference(module):
    """Import a reference package's module. ``timm.optim.*`` is loaded without running
    ``timm/__init__.py``, whose imports need torchvision (the optimizers do not): timm's
    optim folder becomes a private package, so ``import timm`` elsewhere is untouched."""
    prefix = "timm.optim."
    if not module.startswith(prefix):
        return importlib.import_module(module)
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("No module named 'timm'")
    alias = "_fusedadam_timm_optim"
    if alias not in sys.modules:
        package = types.ModuleType(alias)
        package.__path__ = [os.path.join(spec.submodule_search_locations[0], "optim")]
        sys.modules[alias] = package
    return importlib.import_module(f"{alias}.{module[len(prefix) :]}")


def _reference(algorithm, params, grads, n_threads):
    torch = _import_torch()
    if torch is None:
        raise RuntimeError("torch is not importable")
    if algorithm.reference is None:
        raise RuntimeError("no reference package for this algorithm")
    module, _, class_name = algorithm.reference.partition(":")
    cls = getattr(import_reference(module), class_name)
    torch.set_num_threads(n_threads)
    opt = cls(_torch_params(torch, params, grads), lr=LR, **algorithm.reference_options)
    if hasattr(opt, "train"):  # schedule-free optimizers step in train mode only
        opt.train()
    opt.step()
    return opt.step


def _deepspeed(algorithm, params, grads, n_threads):
    cpu_adam = _import_deepspeed()
    if cpu_adam is None:
        raise RuntimeError("deepspeed is not importable")
    if algorithm.deepspeed is None:
        raise RuntimeError("DeepSpeedCPUAdam has no such algorithm")
    torch = _import_torch()
    torch.set_num_threads(n_threads)
    tensors = _torch_params(torch, params, grads)
    opt = cpu_adam(tensors, lr=LR, **algorithm.deepspeed)
    opt.step()
    return opt.step


def _build_one(name, algorithm, params, grads, n_threads):
    if name == "fusedadam":
        return _fusedadam(algorithm, params, grads, n_threads, "compiled")
    if name == "numpy":
        return _fusedadam(algorithm, params, grads, n_threads, "numpy")
    if name == "fusedadam-kernel":
        optimizer = _optimizer(algorithm, params, n_threads, "compiled")
        return roofline.kernel_step(optimizer, grads)
    if name in ("roofline", "roofline 1 thread"):
        states, _ = probe_shape(algorithm.write_pass_arrays)
        threads = 1 if name == "roofline 1 thread" else n_threads
        return roofline.roofline_step(params, grads, states, threads, algorithm.read_passes)
    if name.startswith("torch-"):
        return _torch(name, algorithm, params, grads, n_threads)
    if name == "deepspeed":
        return _deepspeed(algorithm, params, grads, n_threads)
    if name == "reference":
        return _reference(algorithm, params, grads, n_threads)
    raise ValueError(f"unknown implementation {name!r}; expected one of {IMPLS}")


def build(names, algorithm_name, make_params, grads, n_threads, notes):
    """The step callables of ``names`` for one case; the skipped ones go into ``notes``.

    ``make_params()`` returns a fresh list of parameter arrays (each implementation
    steps its own copy); ``grads`` are shared and never written. ``notes`` maps
    ``(impl, algorithm, dtype)`` to why that implementation was skipped.
    """
    algorithm = ALGORITHMS[algorithm_name]
    dtype = np.dtype(grads[0].dtype).name if grads else "?"
    fns = {}
    for name in names:
        try:
            fns[name] = _build_one(name, algorithm, make_params(), grads, n_threads)
        except Exception as exc:  # a peer this machine or library lacks
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            notes.setdefault((name, algorithm_name, dtype), reason)
    return fns


def skipped(notes):
    """``notes`` as sorted lines: ``"torch-fused (adamax, float32): torch.optim has ..."``."""
    return [f"{impl} ({alg}, {dtype}): {why}" for (impl, alg, dtype), why in sorted(notes.items())]
