"""The algorithm registry: what each optimizer keeps as state and which hyperparameters it has.

An algorithm is one entry here (its state and its defaults, ``DEFAULTS``), one loop body in
``_loops.h`` (picked by its scalar rule in ``_scalars.h``, whose twin is
``reference.step_scalars``), one reference update in ``reference.py``, a test variant
(``tests/conftest.py``), and the thin classes and function over them (``optim.py``,
``torch/__init__.py``, ``functional.py``). Everything else (groups, validation, plans, the step
engine, state dicts) is shared.
"""

from typing import Any, Dict, NamedTuple, Tuple

__all__ = ["Algorithm", "ALGORITHMS", "DEFAULTS", "hyper_dict"]


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
# its groups have (torch.optim's where torch has the optimizer, optax's otherwise). The
# optimizer classes' signatures and ``functional`` take them from here
# (tests/test_optim_api.py checks that the signatures agree).
DEFAULTS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "Adam": ("adam", {**_ADAM, **_SHARED, "decoupled_weight_decay": False, "cautious": False}),
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
