"""The algorithm registry: what each optimizer keeps as state and which hyperparameters it has.

An algorithm is one entry here (its state, ``ALGORITHMS``; its class's defaults in signature
order, ``DEFAULTS``; its formula docstring, functional name and torch layout, ``CLASSES``;
the docs and range of a new hyperparameter, ``HYPERPARAMETER_DOCS`` and
``HYPERPARAMETER_RULES``; a new field of ``hyper_dict``), one loop body in ``_loops.h``
(picked by its scalar rule in ``_scalars.h``, whose twin is ``reference.step_scalars``; a
new hyperparameter or per-step scalar is one line of ``FA_HYPER_FIELDS`` /
``FA_SCALAR_FIELDS``, which the extension reads by name), one reference update in
``reference.py`` and its test variants (``ClassEntry.variants``). From these, ``optim.py``
generates the class (its constructor's signature, defaults and annotations, its docstring;
one ``class Name(_Registered): ...`` line keeps it visible to type checkers),
``fusedadam.torch`` its torch class, ``functional.py`` its function, ``_validation`` the
checks of its hyperparameters, and the benchmarks their entry. Everything else (groups,
plans, the step engine, state dicts) is shared.
"""

from typing import Any, Dict, NamedTuple, Tuple

__all__ = [
    "Algorithm",
    "ALGORITHMS",
    "DEFAULTS",
    "ClassEntry",
    "CLASSES",
    "TorchEntry",
    "HYPERPARAMETER_DOCS",
    "HYPERPARAMETER_RULES",
    "Rule",
    "hyper_dict",
]


class Algorithm(NamedTuple):
    """One entry of the registry.

    name : str
        Its name in ``_scalars.h`` (``FA_ALGORITHMS``) and ``reference.step_scalars``.
    state_names : tuple of str
        Arrays shaped like the param, created at zero at its first step, in the order of the
        loop's state slots.
    optional_state : tuple of (str, str)
        ``(array name, group flag)``: an extra slot used while the flag is on (AMSGrad's
        ``max_exp_avg_sq``); created at zero when the flag first is, and kept when it is
        switched off so that switching it back on resumes.
    scalar_state : tuple of (str, float)
        Per-param 0-d float64 state with its initial value (NAdam's ``mu_product``).
    nonnegative : tuple of str
        State arrays that are never negative: ``state_dtype="8bit"`` stores them with the
        unsigned map (one more bit of magnitude); the others with the signed map.
    n_betas : int
        How many decay rates its ``betas`` holds (3: AdEMAMix, Adan).
    from_param : tuple of str
        State arrays created as a copy of the param (its master's value when it has one;
        Schedule-Free's ``z``) instead of at zero.
    decoupled_only : bool
        Its weight decay is always decoupled (``p *= 1 - lr * weight_decay``; Lion, Adan's
        no-prox form, Adam-atan2), whatever ``decoupled_weight_decay`` says.
    """

    name: str
    state_names: tuple
    optional_state: tuple = ()
    scalar_state: tuple = ()
    nonnegative: tuple = ("exp_avg_sq", "max_exp_avg_sq", "exp_inf", "exp_avg_var")
    n_betas: int = 2
    from_param: tuple = ()
    decoupled_only: bool = False

    def slot_names(self, group):
        """The state arrays a step of ``group`` reads and writes, in slot order."""
        return self.state_names + tuple(
            name for name, flag in self.optional_state if group.get(flag)
        )

    def all_state_names(self):
        """Every array name this algorithm's state may hold."""
        return self.state_names + tuple(name for name, _ in self.optional_state)

    def signed_state(self, names):
        """Per state name: True when its 8-bit map is the signed one."""
        return tuple(name not in self.nonnegative for name in names)


ALGORITHMS = {
    "adam": Algorithm(
        "adam", ("exp_avg", "exp_avg_sq"), optional_state=(("max_exp_avg_sq", "amsgrad"),)
    ),
    "adamax": Algorithm("adamax", ("exp_avg", "exp_inf")),
    "nadam": Algorithm("nadam", ("exp_avg", "exp_avg_sq"), scalar_state=(("mu_product", 1.0),)),
    "radam": Algorithm("radam", ("exp_avg", "exp_avg_sq")),
    "adabelief": Algorithm("adabelief", ("exp_avg", "exp_avg_var")),
    "lion": Algorithm("lion", ("exp_avg",), decoupled_only=True),
    "schedulefree": Algorithm(
        "schedulefree",
        ("z", "exp_avg_sq"),
        scalar_state=(("lr_max", -1.0), ("weight_sum", 0.0)),
        from_param=("z",),
    ),
    "radam_schedulefree": Algorithm(
        "radam_schedulefree",
        ("z", "exp_avg_sq"),
        scalar_state=(("lr_max", -1.0), ("weight_sum", 0.0)),
        from_param=("z",),
    ),
    "sparse_adam": Algorithm("sparse_adam", ("exp_avg", "exp_avg_sq")),
    # pytorch_optimizer's state names: the slow EMA is signed
    "ademamix": Algorithm("ademamix", ("exp_avg", "exp_avg_sq", "exp_avg_slow"), n_betas=3),
    # timm's state names and layout: neg_pre_grad holds -g of the last step (signed, as
    # exp_avg_diff); exp_avg_sq (n) is the one nonnegative array
    "adan": Algorithm(
        "adan",
        ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad"),
        n_betas=3,
        decoupled_only=True,
    ),
    "adopt": Algorithm("adopt", ("exp_avg", "exp_avg_sq")),
    "adam_atan2": Algorithm("adam_atan2", ("exp_avg", "exp_avg_sq"), decoupled_only=True),
    "lamb": Algorithm("lamb", ("exp_avg", "exp_avg_sq")),
    "stableadamw": Algorithm("stableadamw", ("exp_avg", "exp_avg_sq")),
}


# The options every dense optimizer has, after its own hyperparameters.
_SHARED = {
    "num_threads": None,
    "backend": "auto",
    "nonfinite": "error",
    "state_dtype": None,
    "grad_scale": 1.0,
    "max_grad_norm": None,
    "master": "float32",
}
_ADAM = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "amsgrad": False,
    "maximize": False,
    "bias_correction": True,
    "beta1_decay": 1.0,
}

# Per optimizer (its class name): its algorithm and the defaults of every hyperparameter
# its groups have (torch.optim's where torch has the optimizer, optax's otherwise), in the
# order of the class's signature: the optimizer classes' signatures (``optim.py``) and the
# ``functional`` functions are generated from them.
DEFAULTS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "Adam": (
        "adam",
        {
            **_ADAM,
            **{k: _SHARED[k] for k in ("num_threads", "backend", "nonfinite")},
            "decoupled_weight_decay": False,
            **_SHARED,
            "cautious": False,
        },
    ),
    "AdamW": (
        "adam",
        {
            **_ADAM,
            "weight_decay": 1e-2,
            **_SHARED,
            "decoupled_weight_decay": True,
            "cautious": False,
        },
    ),
    "Adamax": (
        "adamax",
        {**{k: v for k, v in _ADAM.items() if k != "amsgrad"}, "lr": 2e-3, **_SHARED},
    ),
    "NAdam": (
        "nadam",
        {
            "lr": 2e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "momentum_decay": 4e-3,
            "decoupled_weight_decay": False,
            "maximize": False,
            **_SHARED,
        },
    ),
    "RAdam": (
        "radam",
        {
            "lr": 1e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "decoupled_weight_decay": False,
            "maximize": False,
            **_SHARED,
        },
    ),
    "AdaBelief": (
        "adabelief",
        {
            "lr": 1e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-16,
            "eps_root": 1e-16,
            "weight_decay": 0.0,
            "decoupled_weight_decay": False,
            "maximize": False,
            **_SHARED,
        },
    ),
    "Lion": (
        "lion",
        {
            "lr": 1e-4,
            "betas": (0.9, 0.99),
            "weight_decay": 1e-3,
            "maximize": False,
            **_SHARED,
            "cautious": False,
        },
    ),
    # timm's Lamb (decoupled_weight_decay is its decoupled_decay; max_grad_norm is ours)
    "Lamb": (
        "lamb",
        {
            "lr": 1e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-6,
            "weight_decay": 1e-2,
            "bias_correction": True,
            "grad_averaging": True,
            "trust_clip": False,
            "always_adapt": False,
            "decoupled_weight_decay": False,
            "maximize": False,
            **_SHARED,
        },
    ),
    # torch-optimi's StableAdamW (max_lr None with decouple_lr: the lr at construction)
    "StableAdamW": (
        "stableadamw",
        {
            "lr": 1e-3,
            "betas": (0.9, 0.99),
            "eps": 1e-6,
            "weight_decay": 1e-2,
            "decouple_lr": False,
            "max_lr": None,
            "maximize": False,
            **_SHARED,
        },
    ),
    # pytorch_optimizer.AdEMAMix's defaults (its weight_decouple is decoupled_weight_decay)
    "AdEMAMix": (
        "ademamix",
        {
            "lr": 1e-3,
            "betas": (0.9, 0.999, 0.9999),
            "alpha": 5.0,
            "t_alpha_beta3": None,
            "eps": 1e-8,
            "weight_decay": 0.0,
            "decoupled_weight_decay": False,
            "maximize": False,
            **_SHARED,
        },
    ),
    # timm.optim.Adan's defaults
    "Adan": (
        "adan",
        {
            "lr": 1e-3,
            "betas": (0.98, 0.92, 0.99),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "no_prox": False,
            "maximize": False,
            **_SHARED,
        },
    ),
    # timm.optim.Adopt's defaults (its `decoupled` is decoupled_weight_decay here).
    "ADOPT": (
        "adopt",
        {
            "lr": 1e-3,
            "betas": (0.9, 0.9999),
            "eps": 1e-6,
            "clip_exp": 0.333,
            "weight_decay": 0.0,
            "decoupled_weight_decay": False,
            "maximize": False,
            **_SHARED,
            "cautious": False,
        },
    ),
    # adam_atan2_pytorch.AdamAtan2's defaults.
    "AdamAtan2": (
        "adam_atan2",
        {
            "lr": 1e-4,
            "betas": (0.9, 0.99),
            "weight_decay": 0.0,
            "a": 1.27,
            "b": 1.0,
            "maximize": False,
            **_SHARED,
        },
    ),
    # schedulefree.AdamWScheduleFree's defaults.
    "AdamWScheduleFree": (
        "schedulefree",
        {
            "lr": 0.0025,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "warmup_steps": 0,
            "r": 0.0,
            "weight_lr_power": 2.0,
            "maximize": False,
            **_SHARED,
        },
    ),
    # schedulefree.RAdamScheduleFree's defaults.
    "RAdamScheduleFree": (
        "radam_schedulefree",
        {
            "lr": 0.0025,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "r": 0.0,
            "weight_lr_power": 2.0,
            "silent_sgd_phase": True,
            "maximize": False,
            **_SHARED,
        },
    ),
}


# fusedadam's own options, keyword-only in every torch class (after torch's own arguments)
_TORCH_OURS = "num_threads nonfinite state_dtype max_grad_norm master"


class TorchEntry(NamedTuple):
    """How ``fusedadam.torch`` presents one class: the torch optimizer whose arguments and
    state it mirrors (torch.optim's, or the package its algorithm follows).

    follows : str
        ``"module:Class"`` of that optimizer (the benchmarks time it as the reference).
    positional : str
        Its arguments after ``params`` that may be given by position, in order.
    keywords : str
        The keyword-only ones: torch's implementation flags, then fusedadam's options.
    doc : str
        The class docstring's first part (the options are documented after it).
    extra : str
        Said after the options: how the arguments differ from ``follows``'.
    """

    follows: str
    positional: str
    keywords: str
    doc: str
    extra: str = ""


class ClassEntry(NamedTuple):
    """What the front ends make of one optimizer class of ``DEFAULTS``.

    function : str
        The name of its ``fusedadam.functional`` function.
    doc : str
        Its class docstring: the update formula (the Parameters section is generated from
        the signature and ``HYPERPARAMETER_DOCS``).
    function_doc : str
        What its functional function's docstring says beyond the generated part (the
        meaning of a state list, what ``step`` does).
    fixed : tuple of str
        Hyperparameters of ``DEFAULTS`` the class sets and the signature does not take
        (AdamW's ``decoupled_weight_decay``).
    torch : TorchEntry
        Its ``fusedadam.torch`` class.
    parent : str
        The class it derives from in both front ends (AdamW: Adam), or "".
    variants : tuple of (str, dict)
        Named option sets (keyword arguments of the class) that the test suite steps
        against ``reference`` on every backend, instruction set, thread count, element
        type and state mode: together they run each loop kind the class can reach and
        each option that changes a per-step scalar (``tests/conftest.py`` collects them).
    """

    function: str
    doc: str
    function_doc: str = ""
    fixed: tuple = ()
    torch: Any = None
    parent: str = ""
    variants: tuple = ()


CLASSES: Dict[str, ClassEntry] = {
    "Adam": ClassEntry(
        "adam",
        r"""Adam (Kingma & Ba, 2014), with AMSGrad (Reddi et al., 2018) as an option.

        For step ``t`` of each element, with ``g`` its gradient::

            g     = -g if maximize else g
            g     = g + weight_decay * p                  (L2 weight decay, coupled)
            p     = p * (1 - lr_t * weight_decay)         (decoupled_weight_decay: instead)
            b1_t  = beta1 * beta1_decay**(t - 1)
            m     = b1_t * m + (1 - b1_t) * g
            v     = beta2 * v + (1 - beta2) * g * g
            v_max = max(v_max, v)                         (amsgrad; then v_max is used for v)
            bc1, bc2 = 1 - beta1**t, 1 - beta2**t         (1, 1 without bias_correction)
            p     = p - (lr_t / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

        ``lr_t`` is ``lr`` or ``lr(t)``. eps is added outside the square root and the
        AMSGrad maximum is taken over the raw ``v`` (not the bias-corrected one), as in
        ``torch.optim.Adam``. ``decoupled_weight_decay=True`` is AdamW.

        ``cautious=True`` (Liang et al. 2024, timm's ``cadamw``): per tensor,
        ``mask = m * g > 0`` (``g`` with its L2 term), ``scale = 1 / max(mean(mask), 1e-3)``,
        and the update uses ``m * mask * scale`` in place of ``m``.
        """,
        torch=TorchEntry(
            "torch.optim:Adam",
            "lr betas eps weight_decay amsgrad",
            "foreach maximize capturable differentiable fused decoupled_weight_decay "
            f"{_TORCH_OURS} cautious",
            "Adam and AMSGrad (:class:`fusedadam.Adam` runs the step) for CPU tensors.",
        ),
        variants=(
            ("adam", {}),
            ("adam_l2", {"weight_decay": 0.1}),
            ("amsgrad", {"amsgrad": True}),
            ("amsgrad_l2_maximize", {"amsgrad": True, "weight_decay": 0.05, "maximize": True}),
            ("adam_no_bias_correction", {"bias_correction": False, "beta1_decay": 0.99}),
            ("adam_lr_schedule", {"lr": lambda t: 1e-2 / t**0.5}),
            # the per-tensor kinds (a reduction per tensor, then the update with its scalar)
            ("cautious_adam", {"cautious": True}),
            (
                "cautious_adam_l2_maximize",
                {"cautious": True, "weight_decay": 0.1, "maximize": True},
            ),
        ),
    ),
    "AdamW": ClassEntry(
        "adamw",
        r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

        As :class:`Adam`, except that the gradient gets no L2 term; instead, before the
        update, ``p = p * (1 - lr_t * weight_decay)``. Default ``weight_decay=1e-2``.
        """,
        "With :class:`fusedadam.AdamW`'s defaults: decoupled weight decay, ``weight_decay=1e-2``.",
        fixed=("decoupled_weight_decay",),
        torch=TorchEntry(
            "torch.optim:AdamW",
            "lr betas eps weight_decay amsgrad",
            f"maximize foreach capturable differentiable fused {_TORCH_OURS} cautious",
            "AdamW: Adam with decoupled weight decay (:class:`fusedadam.Adam` with "
            "``decoupled_weight_decay=True`` runs the step) for CPU tensors.",
        ),
        parent="Adam",
        variants=(
            ("adamw", {"weight_decay": 0.1}),
            ("adamw_amsgrad", {"amsgrad": True}),
            ("cautious_adamw", {"cautious": True, "weight_decay": 0.1}),
            ("cautious_adamw_amsgrad", {"cautious": True, "amsgrad": True}),
        ),
    ),
    "Adamax": ClassEntry(
        "adamax",
        r"""Adamax (Kingma & Ba, 2014, Algorithm 2), with torch's eps.

        For step ``t`` of each element::

            g    = -g if maximize else g
            g    = g + weight_decay * p
            b1_t = beta1 * beta1_decay**(t - 1)
            m    = b1_t * m + (1 - b1_t) * g
            u    = max(beta2 * u, |g| + eps)
            p    = p - (lr_t / (1 - beta1**t)) * m / u
        """,
        "``exp_infs`` holds ``u``.",
        torch=TorchEntry(
            "torch.optim:Adamax",
            "lr betas eps weight_decay foreach",
            f"maximize differentiable capturable {_TORCH_OURS}",
            "Adamax (:class:`fusedadam.Adamax` runs the step) for CPU tensors.",
        ),
        variants=(
            ("adamax", {}),
            ("adamax_l2_maximize", {"weight_decay": 0.1, "maximize": True}),
            ("adamax_beta1_decay", {"beta1_decay": 0.9, "bias_correction": False}),
        ),
    ),
    "NAdam": ClassEntry(
        "nadam",
        r"""NAdam (Dozat, 2016), as ``torch.optim.NAdam``: Adam with Nesterov momentum.

        For step ``t`` of each element (``psi`` is ``momentum_decay``)::

            g      = -g if maximize else g
            g      = g + weight_decay * p            (or p *= 1 - lr * weight_decay, decoupled)
            mu_t   = beta1 * (1 - 0.5 * 0.96**(t * psi))
            m      = beta1 * m + (1 - beta1) * g
            v      = beta2 * v + (1 - beta2) * g * g
            denom  = sqrt(v / (1 - beta2**t)) + eps
            p      = p - lr * (1 - mu_t) / (1 - mu_1...mu_t) * g / denom
                       - lr * mu_{t+1} / (1 - mu_1...mu_{t+1}) * m / denom

        The running product ``mu_1 ... mu_t`` is the per-param state ``mu_product`` (a 0-d
        float64, computed in double). The two terms share one division (``_loops.h``).
        """,
        "``mu_products`` holds each param's running product ``mu_1 ... mu_{t-1}``.",
        torch=TorchEntry(
            "torch.optim:NAdam",
            "lr betas eps weight_decay momentum_decay decoupled_weight_decay",
            f"foreach maximize capturable differentiable {_TORCH_OURS}",
            "NAdam (:class:`fusedadam.NAdam` runs the step) for CPU tensors. ``mu_product`` is "
            "kept in float64 (torch: the default dtype); a torch state dict's loads exactly.",
        ),
        variants=(
            ("nadam", {}),
            ("nadam_l2", {"weight_decay": 0.1, "momentum_decay": 0.01}),
            (
                "nadam_decoupled_maximize",
                {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
            ),
        ),
    ),
    "RAdam": ClassEntry(
        "radam",
        r"""RAdam (Liu et al., 2020), as ``torch.optim.RAdam``: Adam with a rectified step.

        For step ``t`` of each element::

            g      = -g if maximize else g
            g      = g + weight_decay * p            (or p *= 1 - lr * weight_decay, decoupled)
            m      = beta1 * m + (1 - beta1) * g
            v      = beta2 * v + (1 - beta2) * g * g
            rho_inf = 2 / (1 - beta2) - 1
            rho_t  = rho_inf - 2 t beta2**t / (1 - beta2**t)
            if rho_t > 5:
                r  = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
                p  = p - lr * r / (1 - beta1**t) * m * sqrt(1 - beta2**t) / (sqrt(v) + eps)
            else:
                p  = p - lr / (1 - beta1**t) * m
        """,
        torch=TorchEntry(
            "torch.optim:RAdam",
            "lr betas eps weight_decay decoupled_weight_decay",
            f"foreach maximize capturable differentiable {_TORCH_OURS}",
            "RAdam (:class:`fusedadam.RAdam` runs the step) for CPU tensors.",
        ),
        variants=(
            ("radam", {}),
            ("radam_l2", {"weight_decay": 0.1}),
            (
                "radam_decoupled_maximize",
                {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
            ),
        ),
    ),
    "AdaBelief": ClassEntry(
        "adabelief",
        r"""AdaBelief (Zhuang et al., 2020, Algorithm 2), as ``optax.adabelief`` computes it.

        For step ``t`` of each element::

            g  = -g if maximize else g
            g  = g + weight_decay * p               (or p *= 1 - lr * weight_decay, decoupled)
            m  = beta1 * m + (1 - beta1) * g
            s  = beta2 * s + (1 - beta2) * (g - m)**2 + eps_root
            p  = p - lr / (1 - beta1**t) * m / (sqrt(s / (1 - beta2**t)) + eps)

        ``s`` (the "belief" in the gradient) is the state ``exp_avg_var``. The defaults are
        optax's (``eps = eps_root = 1e-16``); the paper uses one eps for both.
        """,
        "``exp_avg_vars`` holds ``s``.",
        torch=TorchEntry(
            "torch.optim:Adam",
            "lr betas eps eps_root weight_decay decoupled_weight_decay",
            f"maximize foreach capturable differentiable {_TORCH_OURS}",
            "AdaBelief (:class:`fusedadam.AdaBelief` runs the step; optax's defaults) for CPU "
            "tensors. torch.optim has no AdaBelief: the state is ``exp_avg``, ``exp_avg_var``.",
        ),
        variants=(
            ("adabelief", {}),
            ("adabelief_l2", {"weight_decay": 0.1, "eps": 1e-8, "eps_root": 1e-12}),
            (
                "adabelief_decoupled_maximize",
                {"weight_decay": 0.1, "maximize": True, "decoupled_weight_decay": True},
            ),
        ),
    ),
    "Lion": ClassEntry(
        "lion",
        r"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"), as
        ``optax.lion``.

        For each element::

            g = -g if maximize else g
            p = p * (1 - lr_t * weight_decay)
            p = p - lr_t * sign(beta1 * m + (1 - beta1) * g)
            m = beta2 * m + (1 - beta2) * g

        One state array (``exp_avg``); ``sign(0) = 0``. Weight decay is always decoupled.
        The defaults are optax's; the paper advises an lr 3-10x smaller than AdamW's.

        ``cautious=True`` (timm's ``clion``): per tensor, ``mask = d * g > 0`` with ``d`` the
        sign above, and the step is ``lr_t * d * mask / max(mean(mask), 1e-3)``.
        """,
        "``step`` only numbers the update for ``lr(t)``: Lion has no bias correction.",
        torch=TorchEntry(
            "torch.optim:Adam",
            "lr betas weight_decay",
            f"maximize foreach capturable differentiable {_TORCH_OURS} cautious",
            "Lion (:class:`fusedadam.Lion` runs the step; optax's defaults) for CPU tensors. "
            "torch.optim has no Lion: the state is ``exp_avg``.",
        ),
        variants=(
            ("lion", {}),
            ("lion_maximize", {"weight_decay": 0.0, "maximize": True, "betas": (0.95, 0.98)}),
            ("cautious_lion", {"cautious": True}),
            ("cautious_lion_maximize", {"cautious": True, "maximize": True, "weight_decay": 0.0}),
        ),
    ),
    "Lamb": ClassEntry(
        "lamb",
        r"""LAMB (You et al., 2019, "Large Batch Optimization for Deep Learning"), as timm's
        ``Lamb``: Adam's direction, scaled per tensor by the trust ratio ``|p| / |u|``.

        For step ``t`` of each tensor (bc1, bc2 = 1, 1 without bias_correction)::

            g     = -g if maximize else g
            m     = beta1 * m + (1 - beta1) * g          (grad_averaging=False: beta1 * m + g)
            v     = beta2 * v + (1 - beta2) * g * g
            p     = p * (1 - lr_t * weight_decay)         (decoupled_weight_decay only)
            u     = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)
            u     = u + weight_decay * p                  (not decoupled)
            trust = |p| / |u|   (1 when either norm is 0; at most 1 with trust_clip)
            p     = p - lr_t * trust * u

        A tensor is adapted (``trust`` as above) when ``weight_decay != 0`` or
        ``always_adapt``; otherwise ``trust = 1``. The norms are sums of squares in double in
        a fixed order (the same bits for every thread count). timm's global gradient clipping
        (its ``max_grad_norm=1.0``) is not the same rule as ``max_grad_norm`` here (the rule of
        ``torch.nn.utils.clip_grad_norm_``, per group, off by default).
        """,
        "Each array is one tensor of the trust ratio.",
        torch=TorchEntry(
            "timm.optim.lamb:Lamb",
            "lr bias_correction betas eps weight_decay grad_averaging max_grad_norm trust_clip "
            "always_adapt",
            "decoupled_weight_decay maximize foreach capturable differentiable num_threads "
            "nonfinite state_dtype master",
            "LAMB (:class:`fusedadam.Lamb` runs the step; timm's ``Lamb`` defaults, its "
            "``decoupled_decay`` named ``decoupled_weight_decay``, its global "
            "``max_grad_norm=1.0`` not applied: ``max_grad_norm`` is the per-group rule of "
            "``clip_grad_norm_``) for CPU tensors. The state is timm's: ``exp_avg``, "
            "``exp_avg_sq``.",
        ),
        variants=(
            ("lamb", {}),
            (
                "lamb_decoupled_trust_clip",
                {"decoupled_weight_decay": True, "weight_decay": 0.1, "trust_clip": True},
            ),
            (
                "lamb_always_adapt_maximize",
                {
                    "weight_decay": 0.0,
                    "always_adapt": True,
                    "maximize": True,
                    "grad_averaging": False,
                },
            ),
            ("lamb_no_adapt", {"weight_decay": 0.0, "bias_correction": False}),
        ),
    ),
    "StableAdamW": ClassEntry(
        "stable_adamw",
        r"""StableAdamW (Wortsman et al., 2023, "Stable and low-precision training for
        large-scale vision-language models"), as torch-optimi's ``StableAdamW``: AdamW whose
        learning rate is clipped per tensor by the RMS of ``g**2 / v``.

        For step ``t`` of each tensor::

            g     = -g if maximize else g
            b1_t  = (beta1**t - beta1) / (beta1**t - 1)   (debiased betas: no bias correction)
            b2_t  = (beta2**t - beta2) / (beta2**t - 1)
            m     = b1_t * m + (1 - b1_t) * g
            v     = b2_t * v + (1 - b2_t) * g * g
            rms   = sqrt(mean(g**2 / max(v, eps**2)))
            lr_c  = lr_t / max(1, rms)
            p     = p * (1 - lr_c * weight_decay)        (decouple_lr: 1 - lr_c / max_lr * wd)
            p     = p - lr_c * m / (sqrt(v) + eps)

        The weight decay is decoupled and uses the clipped rate, as optimi's. The RMS is a sum
        in double in a fixed order (the same bits for every thread count).
        """,
        (
            "Each array's RMS clips its own learning rate; with ``decouple_lr=True`` pass "
            "``max_lr``."
        ),
        torch=TorchEntry(
            "optimi:StableAdamW",
            "lr betas weight_decay eps decouple_lr max_lr",
            f"maximize foreach capturable differentiable {_TORCH_OURS}",
            "StableAdamW (:class:`fusedadam.StableAdamW` runs the step; torch-optimi's defaults, "
            "its ``beta1, beta2`` as ``betas``) for CPU tensors. The state is ``exp_avg``, "
            "``exp_avg_sq`` (optimi also keeps ``eps_sq`` and a Kahan buffer; here a low-precision"
            " param keeps a float32 master instead).",
        ),
        variants=(
            ("stableadamw", {}),
            (
                "stableadamw_decouple_lr_maximize",
                {"decouple_lr": True, "weight_decay": 0.1, "maximize": True, "eps": 1e-3},
            ),
        ),
    ),
    "AdamWScheduleFree": ClassEntry(
        "adamw_schedule_free",
        r"""Schedule-Free AdamW (Defazio et al., 2024, "The Road Less Scheduled"), as
        ``schedulefree.AdamWScheduleFree`` computes it.

        No learning-rate schedule: the param holds the gradient point ``y`` while training,
        an interpolation of the averaged iterate ``x`` and the base sequence ``z``. For step
        ``t`` (``t = 1, 2, ...``) of each element::

            lr_t       = lr * min(1, t / warmup_steps)       (lr alone with warmup_steps=0)
            lr_max     = max(lr_max, lr_t)
            weight     = t**r * lr_max**weight_lr_power
            weight_sum = weight_sum + weight
            c          = weight / weight_sum                  (0 when weight_sum is 0)
            g          = -g if maximize else g
            v          = beta2 * v + (1 - beta2) * g * g
            gn         = g / (sqrt(v / (1 - beta2**t)) + eps)
            gn         = gn + weight_decay * y               (weight decay at y)
            y          = lerp(y, z, c)                        (torch's lerp)
            y          = y + lr_t * (beta1 * (1 - c) - 1) * gn
            z          = z - lr_t * gn

        so that ``x = (y - (1 - beta1) z) / beta1`` is the weighted average of the ``z``'s.
        ``z`` starts as a copy of the param, ``v`` (``exp_avg_sq``) at zero; ``lr_max``
        (from -1) and ``weight_sum`` (from 0) are per-param 0-d float64 state, equal over a
        group (the package keeps them, and ``k = t - 1``, per group).

        Call :meth:`eval` before evaluating or saving the model (the params become ``x``) and
        :meth:`train` before training again (back to ``y``); a step in eval mode raises. The
        optimizer starts in train mode; each group's ``"train_mode"`` entry records its mode
        and is saved in :meth:`state_dict`. Learning-rate schedules are unnecessary; ``lr``
        may still be a callable ``lr(t)`` (then scaled by the warmup).
        """,
        (
            "``params`` hold ``y``. The average is ``x = (y - (1 - beta1) z) / beta1`` (what "
            "``AdamWScheduleFree.eval()`` puts in the params)."
        ),
        torch=TorchEntry(
            "schedulefree:AdamWScheduleFree",
            "lr betas eps weight_decay warmup_steps r weight_lr_power foreach",
            f"maximize {_TORCH_OURS}",
            (
                "Schedule-Free AdamW (:class:`fusedadam.AdamWScheduleFree` runs the step) for CPU "
                "tensors, as ``schedulefree.AdamWScheduleFree``: the state is ``z``, "
                "``exp_avg_sq`` and the 0-d float64 ``lr_max`` and ``weight_sum``; call "
                ":meth:`train` before training and :meth:`eval` before evaluating or saving (a "
                "step in eval mode raises). A param whose grad is None keeps its y and z, and its "
                "counters follow its group's, as the package keeps them per group."
            ),
        ),
        variants=(
            ("schedulefree", {"lr": 1e-2}),
            (
                "schedulefree_l2_warmup",
                {"weight_decay": 0.1, "warmup_steps": 3, "r": 0.5, "weight_lr_power": 1.0},
            ),
            (
                "schedulefree_maximize",
                {"maximize": True, "betas": (0.95, 0.98), "weight_lr_power": 0.0},
            ),
        ),
    ),
    "RAdamScheduleFree": ClassEntry(
        "radam_schedule_free",
        r"""Schedule-Free RAdam, as ``schedulefree.RAdamScheduleFree`` computes it: Schedule-Free
    AdamW (:class:`AdamWScheduleFree`: the same state, loop, :meth:`train` and :meth:`eval`)
    with RAdam's rectification in place of a warmup.

    For step ``t`` (no ``warmup_steps``)::

        rho_inf = 2 / (1 - beta2) - 1
        rho_t   = rho_inf - 2 t beta2**t / (1 - beta2**t)
        if rho_t > 4:
            lr_t = lr * ((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))**0.5
            gn   = g / (sqrt(v / (1 - beta2**t)) + eps)
        else:
            lr_t = 0 if silent_sgd_phase else lr
            gn   = g                                    (v still advances)

    then ``lr_max``, ``weight_sum``, ``c``, the weight decay at ``y`` and the ``y`` and
    ``z`` updates as in :class:`AdamWScheduleFree`. The threshold is the package's 4 (torch's
    RAdam switches at 5).
    """,
        "The arrays as :func:`adamw_schedule_free`.",
        torch=TorchEntry(
            "schedulefree:RAdamScheduleFree",
            "lr betas eps weight_decay r weight_lr_power foreach silent_sgd_phase",
            f"maximize {_TORCH_OURS}",
            (
                "Schedule-Free RAdam (:class:`fusedadam.RAdamScheduleFree` runs the step) for CPU "
                "tensors, as ``schedulefree.RAdamScheduleFree``; state, :meth:`train`, "
                ":meth:`eval` and frozen params as :class:`AdamWScheduleFree`."
            ),
        ),
        parent="AdamWScheduleFree",
        variants=(
            # beta2 = 0.9: rectified from step 5 on, so a few steps run both loop kinds
            ("radam_schedulefree", {"betas": (0.9, 0.9)}),
            (
                "radam_schedulefree_loud_l2",
                {"betas": (0.8, 0.9), "silent_sgd_phase": False, "weight_decay": 0.1, "r": 1.0},
            ),
        ),
    ),
    "AdEMAMix": ClassEntry(
        "ademamix",
        r"""AdEMAMix (Pagliardini et al., 2024, "The AdEMAMix Optimizer: Better, Faster,
        Older"), as ``pytorch_optimizer.AdEMAMix``: Adam plus a slow EMA of the gradient.

        For step ``t`` of each element (``T`` is ``t_alpha_beta3``)::

            g       = -g if maximize else g
            g       = g + weight_decay * p                (L2 weight decay, coupled)
            p       = p * (1 - lr_t * weight_decay)       (decoupled_weight_decay: instead)
            alpha_t = min(t * alpha / T, alpha)           (alpha when T is None)
            beta3_t = min(exp(ln(beta1) ln(beta3) / ((1 - t/T) ln(beta3) + (t/T) ln(beta1))),
                          beta3)                          (beta3 when T is None)
            m       = beta1 * m + (1 - beta1) * g
            v       = beta2 * v + (1 - beta2) * g * g
            s       = beta3_t * s + (1 - beta3_t) * g
            p       = p - lr_t * (m / (1 - beta1**t) + alpha_t * s)
                             / (sqrt(v) / sqrt(1 - beta2**t) + eps)

        The slow EMA ``s`` (state ``exp_avg_slow``) is not bias-corrected, as in the paper and
        the package. The defaults are pytorch_optimizer's; the paper's runs use
        ``decoupled_weight_decay=True`` (AdamW's decay) and ``t_alpha_beta3`` = the run's
        length. With ``t_alpha_beta3``, beta1 and beta3 must be > 0 (their logarithms).
        """,
        (
            "``exp_avg_slows`` holds the slow EMA; ``step`` also drives the ``t_alpha_beta3`` "
            "warmup."
        ),
        torch=TorchEntry(
            "pytorch_optimizer:AdEMAMix",
            "lr betas alpha t_alpha_beta3 eps weight_decay decoupled_weight_decay",
            f"maximize foreach capturable differentiable {_TORCH_OURS}",
            "AdEMAMix (:class:`fusedadam.AdEMAMix` runs the step; pytorch_optimizer's defaults and"
            " state names: ``exp_avg``, ``exp_avg_sq``, ``exp_avg_slow``) for CPU tensors.",
            extra=(
                "Its ``weight_decouple`` is ``decoupled_weight_decay`` here; ``fixed_decay`` is "
                "not offered (docs/algorithms_ademamix_adan.md)."
            ),
        ),
        variants=(
            ("ademamix", {}),
            ("ademamix_warmup_l2", {"t_alpha_beta3": 7.0, "alpha": 2.0, "weight_decay": 0.1}),
            (
                "ademamix_decoupled_maximize",
                {"weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
            ),
        ),
    ),
    "Adan": ClassEntry(
        "adan",
        r"""Adan (Xie et al., 2022, "Adan: Adaptive Nesterov Momentum Algorithm for Faster
        Optimizing Deep Models"), as ``timm.optim.Adan``.

        For step ``t`` of each element::

            g  = -g if maximize else g
            d  = g - g_prev                            (0 at t = 1: g_prev = g, as timm)
            w  = g + beta2 * d
            m  = beta1 * m + (1 - beta1) * g
            dm = beta2 * dm + (1 - beta2) * d
            n  = beta3 * n + (1 - beta3) * w * w
            u  = (lr_t / (1 - beta1**t)) * m + (lr_t * beta2 / (1 - beta2**t)) * dm
            r  = u / (sqrt(n) / sqrt(1 - beta3**t) + eps)
            p  = p * (1 - lr_t * weight_decay) - r     (no_prox=True)
            p  = (p - r) / (1 + lr_t * weight_decay)   (no_prox=False, the default)

        The betas are timm's (the decay rates; the paper writes ``1 - beta``). Four state
        arrays, named as timm's: ``exp_avg`` (m), ``exp_avg_sq`` (n), ``exp_avg_diff`` (dm) and
        ``neg_pre_grad``, which holds ``-g`` of the last step: the gradient the step used,
        after unscaling (``grad_scale``), clipping (``max_grad_norm``) and ``maximize``.
        """,
        (
            "``neg_pre_grads`` holds ``-g`` of the previous step and is overwritten with this "
            "step's; at ``step=1`` it is not read (the previous gradient is taken to be this one, "
            "as timm)."
        ),
        torch=TorchEntry(
            "timm.optim.adan:Adan",
            "lr betas eps weight_decay no_prox",
            f"maximize foreach capturable differentiable {_TORCH_OURS}",
            "Adan (:class:`fusedadam.Adan` runs the step; timm's defaults and state names: "
            "``exp_avg``, ``exp_avg_sq``, ``exp_avg_diff``, ``neg_pre_grad``) for CPU tensors.",
            extra=(
                "``maximize`` is fusedadam's (timm has none); timm's ``caution`` is not offered "
                "(docs/algorithms_ademamix_adan.md)."
            ),
        ),
        variants=(
            ("adan", {"weight_decay": 0.05}),
            ("adan_no_prox_maximize", {"weight_decay": 0.05, "no_prox": True, "maximize": True}),
        ),
    ),
    "ADOPT": ClassEntry(
        "adopt",
        r"""ADOPT (Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any beta2
        with the Optimal Rate"), as ``timm.optim.Adopt`` computes it.

        Step ``t = 1`` of each element only starts the second moment::

            g = -g if maximize else g
            g = g + weight_decay * p                      (L2 weight decay, coupled)
            v = v + g * g                                 (v = g * g: the state starts at 0)

        and every later step ``t`` normalises the gradient by the *previous* ``v``::

            g = -g if maximize else g
            g = g + weight_decay * p                      (L2 weight decay, coupled)
            p = p * (1 - lr_t * weight_decay)             (decoupled_weight_decay: instead)
            n = g / max(sqrt(v), eps)
            n = clamp(n, -(t - 1)**clip_exp, (t - 1)**clip_exp)   (unless clip_exp is None)
            m = beta1 * m + (1 - beta1) * n
            p = p - lr_t * m
            v = beta2 * v + (1 - beta2) * g * g

        No bias correction. The defaults and the clip ``(t - 1)**clip_exp`` are timm's
        (``clip_exp=0.333``); the paper's and pytorch-optimizer's clip is ``t**0.25``, and
        pytorch-optimizer also decays the param at step 1 (docs/algorithms_adopt_atan2.md).
        timm's ``decoupled`` is ``decoupled_weight_decay`` here and its ``caution`` is
        ``cautious`` (from step 2, ``m`` masked where ``m * g <= 0`` and the rest scaled by
        ``1 / max(mean(mask), 1e-3)`` per tensor, as timm; ``m`` is stored unmasked); its
        ``corrected_weight_decay`` is not offered.
        """,
        "``step=1`` only sets ``exp_avg_sqs`` to ``g * g`` (the params do not move).",
        torch=TorchEntry(
            "timm.optim.adopt:Adopt",
            "lr betas eps clip_exp weight_decay decoupled_weight_decay",
            f"maximize foreach capturable differentiable {_TORCH_OURS} cautious",
            "ADOPT (:class:`fusedadam.ADOPT` runs the step; timm's ``Adopt`` defaults and clip) "
            "for CPU tensors. The state is ``exp_avg``, ``exp_avg_sq`` as timm's; timm's "
            "``decoupled`` is ``decoupled_weight_decay`` here, its ``caution`` is ``cautious``, "
            "and its ``corrected_weight_decay`` is not offered.",
        ),
        variants=(
            # ADOPT runs adopt_first at step 1, adopt later; clip_exp=None gives an infinite clip
            ("adopt", {"betas": (0.9, 0.99)}),
            ("adopt_l2", {"weight_decay": 0.1, "clip_exp": 0.25}),
            (
                "adopt_decoupled_maximize_noclip",
                {
                    "weight_decay": 0.1,
                    "decoupled_weight_decay": True,
                    "maximize": True,
                    "clip_exp": None,
                },
            ),
            ("adopt_cautious_l2", {"weight_decay": 0.1, "cautious": True}),
        ),
    ),
    "AdamAtan2": ClassEntry(
        "adam_atan2",
        r"""Adam-atan2 (Everett et al., 2024, "Scaling Exponents Across Parameterizations and
        Optimizers"), as ``adam_atan2_pytorch.AdamAtan2`` computes it: Adam without eps.

        For step ``t`` of each element::

            g = -g if maximize else g
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            bc1, bc2 = 1 - beta1**t, 1 - beta2**t
            p = p * (1 - lr_t * weight_decay)
            p = p - lr_t * a * atan2(m * (1 / bc1), sqrt(v * (b * b / bc2)))

        atan2 bounds each element's step by ``lr_t * a * pi / 2`` and needs no eps (it is
        scale invariant and defined at 0). Weight decay is always decoupled. atan2 is
        fusedadam's own (``fusedadam.reference.atan2``, the same operations in the compiled
        loops and in NumPy), within a few ulps of ``numpy.arctan2``
        (docs/algorithms_adopt_atan2.md). The defaults are adam_atan2_pytorch's.
        """,
        torch=TorchEntry(
            "adam_atan2_pytorch:AdamAtan2",
            "lr betas weight_decay a b",
            f"maximize foreach capturable differentiable {_TORCH_OURS}",
            "Adam-atan2 (:class:`fusedadam.AdamAtan2` runs the step; adam_atan2_pytorch's "
            "``AdamAtan2`` defaults) for CPU tensors. The state is ``exp_avg``, ``exp_avg_sq`` "
            "(that package also keeps an int ``steps``; here it is ``step``).",
        ),
        variants=(
            ("adam_atan2", {"lr": 1e-3}),
            (
                "adam_atan2_decay_maximize",
                {"weight_decay": 0.1, "maximize": True, "a": 0.5, "b": 2.0, "betas": (0.8, 0.95)},
            ),
        ),
    ),
}


# Every hyperparameter: (its type in the docs, what it does). The Parameters section of
# each class's docstring is built from its signature and this table.
HYPERPARAMETER_DOCS: Dict[str, Tuple[str, str]] = {
    "params": (
        "ndarray, sequence of ndarray, or sequence of dict",
        "Arrays to optimize (float32, float64, bfloat16 or float16, C-contiguous, writeable; "
        "bfloat16/float16 params keep a float32 ``master_param``; SparseAdam: float32/float64 "
        '2-D tables), updated in place; or param groups ``{"params": [...], "lr": '
        "...}`` overriding any hyperparameter below.",
    ),
    "lr": (
        "float or callable",
        "Learning rate, or ``lr(t)`` returning it for step ``t`` "
        "(a :mod:`fusedadam.schedules` object pickles and saves).",
    ),
    "betas": ("(float, float)", "Decay rates of the first and second moments."),
    "eps": ("float", "Added to the denominator (> 0: no division by zero)."),
    "eps_root": ("float", "Added to the second moment itself, every step (>= 0)."),
    "weight_decay": ("float", "L2 penalty added to the gradient, or the decoupled decay rate."),
    "amsgrad": ("bool", "Use the running maximum of the second moment (AMSGrad)."),
    "maximize": ("bool", "Ascend instead of descend."),
    "cautious": (
        "bool",
        "Cautious masking (Liang et al. 2024, as timm's ``cadamw``/``clion``): an element whose "
        "update disagrees in sign with its gradient takes no step, the others are scaled by "
        "``1 / max(mean(mask), 1e-3)`` per tensor.",
    ),
    "grad_averaging": ("bool", "``m = beta1 m + (1 - beta1) g``; False: ``m = beta1 m + g``."),
    "trust_clip": ("bool", "Clip the trust ratio at 1 (LAMBC)."),
    "always_adapt": (
        "bool",
        "Apply the trust ratio to tensors with ``weight_decay == 0`` too (else they take "
        "Adam's step).",
    ),
    "decouple_lr": (
        "bool",
        "Fully decoupled weight decay: ``p *= 1 - lr_t / max_lr * weight_decay``.",
    ),
    "max_lr": (
        "float or None",
        "The largest lr of the schedule, for ``decouple_lr`` (None: the lr given, which then "
        "must be a number).",
    ),
    "bias_correction": ("bool", "Divide the moments by ``1 - beta**t``."),
    "beta1_decay": (
        "float in (0, 1]",
        "The Adam paper's lambda: ``beta1_t = beta1 * beta1_decay**(t-1)``.",
    ),
    "momentum_decay": ("float", "NAdam's psi in ``mu_t = beta1 (1 - 0.5 * 0.96**(t psi))``."),
    "decoupled_weight_decay": (
        "bool",
        "``p *= 1 - lr * weight_decay`` instead of the L2 term (AdamW's decay).",
    ),
    "clip_exp": (
        "float or None",
        "ADOPT: the normalised gradient is clipped to ``+-(t - 1)**clip_exp`` (timm's "
        "rule); None: no clip.",
    ),
    "a": ("float", "Adam-atan2: the update's scale, ``p -= lr * a * atan2(...)`` (> 0)."),
    "b": ("float", "Adam-atan2: the scale of ``sqrt(v^)`` inside atan2 (>= 0)."),
    "num_threads": (
        "int or None",
        "None follows OpenMP (``OMP_NUM_THREADS``, threadpoolctl); "
        "-1 all processors; a positive count (at most "
        "``fusedadam._kernels.MAX_NUM_THREADS`` are used).",
    ),
    "backend": (
        '{"auto", "compiled", "numpy"}',
        "The compiled kernel, the NumPy reference, "
        "or the first available (the same step, bit for bit).",
    ),
    "nonfinite": (
        '{"error", "skip", "ignore"}',
        "What a step does when a gradient holds "
        "NaN or inf (after unscaling): raise ``FloatingPointError`` naming the parameter "
        "and the count, changing nothing; skip the whole step (``skipped_steps`` counts "
        "them, as AMP loss scaling does); or no check at all (fastest).",
    ),
    "state_dtype": (
        '{None, "float32", "bfloat16", "8bit", "8bit_companded"}',
        "The dtype of the moments: None is the compute dtype (float32, or float64 for "
        'float64 params); ``"bfloat16"`` halves the state memory and bytes (float32, '
        'bfloat16 and float16 params; rounded to nearest even each step); ``"8bit"`` '
        "stores each moment block-wise in one byte per element plus one float32 absmax "
        "per 256 elements (``<moment>_absmax``; params of at least 4096 elements, smaller "
        "ones keep float32 moments), requantized in the step's pass; "
        '``"8bit_companded"``: the same layout with FlashOptim\'s companded map (int8 '
        "codes; see docs/master_residual.md).",
    ),
    "master": (
        '{"float32", "residual", "compact"}',
        "How a bfloat16/float16 param keeps its float32 master: a float32 copy "
        '(``master_param``, 4 bytes), or for bfloat16 params ``"residual"``: the '
        "master's low 16 bits (``master_residual``, int16, 2 bytes), the master kept "
        "exactly, the param its rounding to nearest with ties away from zero (see "
        'docs/master_residual.md); ``"compact"``: 8 of them (int8, 1 byte), lossy: the '
        "master kept to within 128 float32 units in the last place. No effect on "
        "float32/float64 params (they have no master); float16 params refuse both.",
    ),
    "grad_scale": (
        "float, callable or array",
        "Gradients are divided by it in the step's pass (AMP loss scaling): a float > 0, "
        "``grad_scale(t)``, or a one-element array read at each step; ``step(grads, "
        "grad_scale=...)`` overrides it for one step.",
    ),
    "alpha": ("float", "AdEMAMix: the weight of the slow EMA in the update (>= 0)."),
    "t_alpha_beta3": (
        "float or None",
        "AdEMAMix: steps over which alpha ramps up linearly and beta3 from beta1 to beta3 "
        "(the paper's schedulers, as pytorch_optimizer has them); None: no warmup.",
    ),
    "no_prox": (
        "bool",
        "Adan: decoupled decay ``p *= 1 - lr * weight_decay`` before the update, instead "
        "of the proximal ``p = (p - update) / (1 + lr * weight_decay)`` after it.",
    ),
    "warmup_steps": (
        "int",
        "Schedule-Free's linear warmup: the lr of step ``t`` is ``lr * min(1, t / "
        "warmup_steps)`` (0: none).",
    ),
    "r": ("float", "Schedule-Free's polynomial weighting ``t**r`` of the average (>= 0)."),
    "weight_lr_power": (
        "float",
        "Schedule-Free: the average's weights are ``lr_max**weight_lr_power`` (>= 0; "
        "0: no weighting by the learning rate).",
    ),
    "silent_sgd_phase": (
        "bool",
        "Schedule-Free RAdam: while the variance is not tractable (``rho_t <= 4``) the "
        "params do not move (True) or take the unnormalized step with ``lr`` (False); "
        "``v`` advances either way.",
    ),
    "max_grad_norm": (
        "float or None",
        "Clip the group's unscaled gradients to this global 2-norm (the rule of "
        "``torch.nn.utils.clip_grad_norm_``), the norm computed in the scan of the "
        "non-finite check; ``last_grad_norm`` holds it.",
    ),
}


class Rule(NamedTuple):
    """The range of one real-valued hyperparameter of an algorithm (``_validation`` turns
    it into the check, with these messages). A bool one (``"bool"`` in
    ``HYPERPARAMETER_DOCS``) needs none: it is checked to be a bool.

    ok : callable
        Whether a finite value is in range.
    text : str
        Said after a value out of range (``Invalid a value: 0.0`` + text).
    optional : str
        "" when None is refused; else what a value of the wrong type is told (None is
        accepted: the option is off).
    across : callable or None
        A rule between this hyperparameter and the rest of its group, run once every entry
        of the group passed its own check: ``across(group)`` returns the message of the
        ValueError to raise, or None.
    """

    ok: Any
    text: str
    optional: str = ""
    across: Any = None


def _warmup_betas_positive(group):
    """AdEMAMix's beta3 warmup takes log(beta1) and log(beta3): both must be > 0."""
    betas = group.get("betas")
    if group.get("t_alpha_beta3") is None or betas is None:
        return None
    for i in (0, 2):
        if betas[i] == 0.0:
            return (
                f"Invalid beta parameter at index {i}: {betas[i]} (must be > 0 with "
                "t_alpha_beta3: the beta3 warmup interpolates log(beta1) and log(beta3))"
            )
    return None


# The ranges of the algorithms' own real-valued hyperparameters (the shared ones, lr,
# betas, eps, weight_decay, ..., are ``_validation``'s).
HYPERPARAMETER_RULES: Dict[str, Rule] = {
    "eps_root": Rule(lambda x: x >= 0.0, " (must be finite and >= 0)"),
    "beta1_decay": Rule(lambda x: 0.0 < x <= 1.0, " (must be in (0, 1])"),
    "momentum_decay": Rule(lambda x: x >= 0.0, " (must be finite and >= 0)"),
    "clip_exp": Rule(
        lambda x: x >= 0.0,
        " (must be finite and >= 0, or None for no clip)",
        optional=" (a float >= 0, or None)",
    ),
    "a": Rule(lambda x: x > 0.0, " (the scale of the atan2 update: finite and > 0)"),
    "b": Rule(
        lambda x: x >= 0.0 and x * x < float("inf"),
        " (the scale of sqrt(v) inside atan2: >= 0, and b * b finite)",
    ),
    "alpha": Rule(lambda x: x >= 0.0, " (must be finite and >= 0)"),
    "t_alpha_beta3": Rule(
        lambda x: x > 0.0,
        " (must be finite and > 0)",
        optional=" (a float > 0, or None)",
        across=_warmup_betas_positive,
    ),
    "r": Rule(lambda x: x >= 0.0, " (must be finite and >= 0)"),
    "weight_lr_power": Rule(lambda x: x >= 0.0, " (must be finite and >= 0)"),
    "max_lr": Rule(
        lambda x: x > 0.0, " (must be finite and > 0)", optional=" (a float > 0, or None)"
    ),
}


def hyper_dict(algorithm, group):
    """The hyperparameters of a validated group as ``fa_hyper`` reads them: every field, in
    double (NumPy scalars included: the scalars are formed in double on every path)."""
    decoupled = algorithm.decoupled_only or bool(group.get("decoupled_weight_decay", False))
    beta1, beta2 = group["betas"][:2]
    t_alpha_beta3 = group.get("t_alpha_beta3")
    clip_exp = group.get("clip_exp")
    return {
        "algorithm": algorithm.name,
        "amsgrad": bool(group.get("amsgrad", False)),
        "decoupled": decoupled,
        "maximize": bool(group.get("maximize", False)),
        "bias_correction": bool(group.get("bias_correction", True)),
        "beta1": float(beta1),
        "beta2": float(beta2),
        "eps": float(group.get("eps", 0.0)),
        "eps_root": float(group.get("eps_root", 0.0)),
        "weight_decay": float(group.get("weight_decay", 0.0)),
        "beta1_decay": float(group.get("beta1_decay", 1.0)),
        "momentum_decay": float(group.get("momentum_decay", 0.0)),
        "beta3": float(group["betas"][2]) if len(group["betas"]) > 2 else 0.0,
        "alpha": float(group.get("alpha", 0.0)),
        "t_alpha_beta3": 0.0 if t_alpha_beta3 is None else float(t_alpha_beta3),
        "no_prox": bool(group.get("no_prox", False)),
        "adopt_clip": clip_exp is not None,
        "clip_exp": 0.0 if clip_exp is None else float(clip_exp),
        "atan2_a": float(group.get("a", 0.0)),
        "atan2_b": float(group.get("b", 0.0)),
        "warmup_steps": float(group.get("warmup_steps", 0)),
        "r": float(group.get("r", 0.0)),
        "weight_lr_power": float(group.get("weight_lr_power", 0.0)),
        "silent_sgd_phase": bool(group.get("silent_sgd_phase", False)),
        "cautious": bool(group.get("cautious", False)),
        "grad_averaging": bool(group.get("grad_averaging", True)),
        "trust_clip": bool(group.get("trust_clip", False)),
        "always_adapt": bool(group.get("always_adapt", False)),
        "decouple_lr": bool(group.get("decouple_lr", False)),
        "max_lr": float(group.get("max_lr") or 0.0),
    }
