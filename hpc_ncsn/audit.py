"""Sampler audit: does a sampler with the exact score settle, before any compute is spent.

NCSNv2's Proposition 3 (Song & Ermon 2020) follows a chain on the data set of one
point μ, whose blurred score is exact: s(x, σ) = −(x − μ)/σ². With u the chain's
variance per coordinate over σ_i² (u = 1 is the level's own noise), one Langevin
step x ← x + α·s + sqrt(2α)·z is, per coordinate,

    ncsn rule (α_i = ε·σ_i²/σ_L², a = α_i/σ_i² = ε/σ_L²):   u ← (1 − a)²·u + 2a        (exact)
    snr rule (α = 2(r‖z‖/‖s‖)², so a = 2r²ζ/w per chain):   u ← u − 4r² + 4r²(1 + r²)/u (D → ∞)

and the next level rescales u ← u·σ_i²/σ_{i+1}² (γ² on a geometric ladder). The other samplers
move between levels by their own exact maps (`_next_level`: the ancestral predictor contracts, the
probability-flow ODE's Euler and Heun steps keep u), and the ancestral sampler's corrector steps are
the Langevin steps above. The snr
map holds when ‖z‖²/D = ζ and the chain's ‖x − μ‖²/(Dσ²) = w equal their means; in
D dimensions they fluctuate by O(1/√D), and near the stability edge that matters.
`chain_noise` therefore carries the mean m and the variance v of w across chains,
to first order in 1/D (E ζ² = 1 + 2/D, E[1/w] ≈ (1 + v/m²)/m, the cross term e·z
adds 8a(1 − a)²m/D to v); with `dim=None` it is the D → ∞ map exactly. A Gaussian
data set N(μ, s²I) has the exact score −(x − μ)/(s² + σ²): the same maps with
σ_i² replaced by τ_i² = s² + σ_i² (`data_variance` = s²).

On a ladder of constant ratio γ the snr chain stays bounded only if r ≥ r_min(γ, T):
below it the per-level map u ↦ γ²·g^T(u) has no fixed point and the excess grows
geometrically. `r_min` finds it by bisection on the iterated map (no continuum
approximation). A chain that ends above `END_NOISE_LIMIT` σ_L is refused
(`check`, through `audit_arm`) unless the caller overrides, and the record says so.

One concept, the audit (the maps, r_min, the record and its verdicts), hence a little over ~300 lines.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Collection, Mapping, Sequence

from .config import ARMS, Config, NoiseConfig, SamplerConfig, arm_of
from .errors import UserError

__all__ = [
    "END_NOISE_LIMIT",
    "OVERRIDE_FLAG",
    "AuditRecord",
    "UnstableSampler",
    "audit",
    "audit_arm",
    "audit_arms",
    "audit_config",
    "chain_noise",
    "check",
    "end_noise",
    "r_min",
]

# Refuse a chain that ends with more than 3 σ_L of noise (docs/science.md, "The sampler audit").
END_NOISE_LIMIT = 3.0
# The option a command offers to run an arm the audit refuses.
OVERRIDE_FLAG = "--allow-unstable-sampler"
_MAX_STEPS = 10_000  # sampler.steps_per_level's upper bound
_MAX_SNR = 4.0  # the largest r the audit tries (score SDE uses 0.16; r ≥ 1 steps farther than the noise)
_DIVERGED = 1e30


class UnstableSampler(UserError, ValueError):
    """An arm whose chain, with the exact score, does not settle by the last level."""


def chain_noise(sigmas: Sequence[float], *, step_rule: str, steps: int, step_lr: float = 0.0, snr: float = 0.0,
                dim: int | None = None, data_variance: float = 0.0, initial: tuple[float, float] = (1.0, 0.0),
                kind: str = "langevin") -> list[float]:
    """u at the end of each level (the chain's variance per coordinate over τ_i² = s² + σ_i²).

    `initial` = (mean, variance across chains) of u at the start of level 1;
    `dim=None` iterates the D → ∞ map (snr rule; the ncsn map does not depend on D).
    `kind` is how a chain moves from one level to the next (`_next_level`); `steps` Langevin steps
    follow at every level (T for 'langevin', the corrector steps for 'ancestral', 0 for 'ode'/'edm').
    """
    taus = [data_variance + float(sigma) ** 2 for sigma in sigmas]
    mean, spread = initial
    trace = []
    for level, tau2 in enumerate(taus):
        if level:
            mean, spread = _next_level(kind, mean, spread, float(sigmas[level - 1]), float(sigmas[level]),
                                       taus[level - 1], tau2, dim)
        for _ in range(steps):
            if mean > _DIVERGED:
                break
            if step_rule == "ncsn":
                a = step_lr * float(sigmas[level]) ** 2 / float(sigmas[-1]) ** 2 / tau2
                mean, spread = (1.0 - a) ** 2 * mean + 2.0 * a, (1.0 - a) ** 4 * spread
            elif step_rule == "snr":
                mean, spread = _snr_step(mean, spread, snr, dim)
            else:
                raise ValueError(f"unknown step rule {step_rule!r}; choose 'ncsn' or 'snr'")
        trace.append(mean)
    return trace


def _next_level(kind: str, mean: float, spread: float, above: float, sigma: float, tau2_above: float, tau2: float,
                dim: int | None) -> tuple[float, float]:
    """(mean, variance across chains) of u on arriving at σ from the level above, with the exact score.

    langevin: x is kept, so u grows by ρ = τ_above²/τ² (γ² on a geometric ladder of one point).
    ancestral: x ← x + Δ·s + sqrt(Δ)·z, Δ = σ_above² − σ², and 1 − Δ/τ_above² = 1/ρ, so
        u ← u/ρ + (ρ − 1)  (exact; it settles at u = ρ), spread ← spread/ρ² + (2(ρ − 1)² + 4(ρ − 1)u/ρ)/D.
    ode, edm: x ← m·x, deterministic; Euler m = 1 + (σ − σ_above)·σ_above/τ_above², Heun (edm) averages that
        slope with the one at the Euler point; u ← m²ρ·u (exact: m² = 1/ρ for one point, so u is kept).
    """
    ratio = tau2_above / tau2
    if kind == "langevin":
        return mean * ratio, spread * ratio**2
    if kind == "ancestral":
        new_mean = mean / ratio + ratio - 1.0
        noise = 0.0 if dim is None else (2.0 * (ratio - 1.0) ** 2 + 4.0 * (ratio - 1.0) * mean / ratio) / dim
        return new_mean, spread / ratio**2 + noise
    if kind in ("ode", "edm"):
        euler = 1.0 + (sigma - above) * above / tau2_above
        factor = euler if kind == "ode" else 1.0 + (sigma - above) * 0.5 * (above / tau2_above + sigma * euler / tau2)
        scale = factor**2 * ratio
        return mean * scale, spread * scale**2
    raise ValueError(f"unknown sampler kind {kind!r}; choose langevin, ancestral, ode or edm")


def _snr_step(mean: float, spread: float, r: float, dim: int | None) -> tuple[float, float]:
    """One snr step of the chains' (mean, variance) of w, to first order in 1/D."""
    big = 4.0 * r * r * (1.0 + r * r)
    if dim is None:
        return mean - 4.0 * r * r + big / mean, 0.0
    a = 2.0 * r * r / mean
    new_mean = mean - 4.0 * r * r + big * (1.0 + 2.0 / dim) * (1.0 + spread / mean**2) / mean
    slope_w, slope_zeta = 1.0 - big / mean**2, -4.0 * r * r + 2.0 * big / mean
    new_spread = slope_w**2 * spread + (slope_zeta**2 * 2.0 + 8.0 * a * (1.0 - a) ** 2 * mean) / dim
    return new_mean, new_spread


def _bounded(r: float, gamma: float, steps: int, max_levels: int = 20_000) -> bool:
    """Whether the D → ∞ snr map, from u = 1 at a ladder of constant ratio γ, stays bounded.

    Above u* = 4Tr²γ²/(γ² − 1) the level map γ²·g^T(u) > γ²(u − 4Tr²) exceeds u and grows:
    that certifies divergence; convergence to a fixed point certifies the opposite.
    """
    escape = 4.0 * steps * r * r * gamma**2 / (gamma**2 - 1.0)
    u = 1.0
    for _ in range(max_levels):
        previous = u
        for _ in range(steps):
            u = u - 4.0 * r * r + 4.0 * r * r * (1.0 + r * r) / u
        u *= gamma**2
        if u > escape:
            return False
        if abs(u - previous) <= 1e-13 * u:
            return True
    return True


def r_min(gamma: float, steps: int, *, tolerance: float = 1e-6) -> float:
    """The smallest SNR r whose chain stays bounded on a ladder of constant ratio γ > 1 with T steps per
    level: bisection on the iterated D → ∞ map (a saddle-node, where the level map's two fixed points meet).
    For a ladder with varying ratios, r_min of its largest ratio (r_min grows with γ); inf when no r up to
    `_MAX_SNR` keeps it bounded."""
    if gamma <= 1.0:
        raise ValueError(f"the ladder ratio γ must be > 1, got {gamma}")
    low, high = 0.0, 1.0
    while not _bounded(high, gamma, steps):
        if high >= _MAX_SNR:  # no r keeps the chain bounded: the ladder's gaps are too wide for T steps
            return math.inf
        low, high = high, 2.0 * high
    while high - low > tolerance:
        middle = 0.5 * (low + high)
        low, high = (low, middle) if _bounded(middle, gamma, steps) else (middle, high)
    return high


@dataclass(frozen=True)
class AuditRecord:
    """The audit of one arm: its sampler, the chain's noise with the exact score, and the verdict.

    `level_noise[i]` = sqrt(u) at the end of level i (units of σ_i); `end_noise` the
    last of them (units of σ_L, before the final denoising step). `r_min` (snr rule)
    is `r_min` of the ladder's largest ratio (D → ∞); `r_needed` the smallest r ≥ r_min
    whose chain passes in D dimensions (the spread of finite D raises it near the
    edge: D = 256 needs more than r_min); `steps_needed` the smallest T whose chain
    passes at the arm's own ε or r (None if no T up to 10,000 does).
    """

    arm: str
    step_rule: str
    steps_per_level: int
    step_lr: float
    snr: float
    dim: int | None
    num_levels: int
    end_noise: float
    level_noise: tuple[float, ...]
    r_min: float | None
    r_needed: float | None
    steps_needed: int | None
    limit: float = END_NOISE_LIMIT
    overridden: bool = False
    kind: str = "langevin"
    gamma: float = 0.0  # the ladder's largest ratio σ_i/σ_{i+1}
    span: float = 0.0  # σ_1/σ_L
    reason: str = ""  # why an unsettled chain runs anyway: the arm's design (config.Arm) or the user's override

    @property
    def stable(self) -> bool:
        return self.end_noise <= self.limit

    @property
    def verdict(self) -> str:
        if self.stable:
            return "settles"
        if self.overridden:
            return f"unsettled, run anyway: {self.reason}" if self.reason else "refused, overridden"
        return "refused"

    def to_dict(self) -> dict:
        record = {**asdict(self), "stable": self.stable, "verdict": self.verdict}
        if self.r_min is not None and math.isinf(self.r_min):
            record["r_min"] = None  # no r settles the chain (JSON has no infinity); the verdict and message say so
        return record

    def message(self, flag: str = OVERRIDE_FLAG) -> str:
        """The one-line refusal: the arm, its end noise, r_min and the ways out."""
        ways = []
        if self.kind != "langevin" and self.steps_per_level == 0:  # no Langevin step: only the ladder is to blame
            levels = 1 + math.ceil(math.log(self.span) / math.log(self.limit) - 1e-9)  # γ ≤ the limit
            return (f"arm {self.arm}: with the exact score its {self.kind} chain ends at {self.end_noise:.3g} σ_L "
                    f"(limit {self.limit:g} σ_L; its ladder's largest ratio γ = {self.gamma:.3g}: each step lands about a "
                    f"level behind); sample on a finer ladder (sampler.ladder=geometric sampler.num_levels >= "
                    f"{levels + 1}), or pass {flag} {self.arm.split(',')[0]} to run it anyway")
        if self.step_rule == "snr":
            bound = ("" if self.r_min is None else ", no r up to 4 settles it" if math.isinf(self.r_min)
                     else f", r_min = {self.r_min:.3f}")
            cause = f"r = {self.snr:g} at T = {self.steps_per_level}{bound}"
            if self.r_needed is not None:
                ways.append(f"raise sampler.snr to >= {_round_up(self.r_needed):.3f}")
        else:
            cause = f"ε = {self.step_lr:g} at T = {self.steps_per_level}"
            ways.append("set sampler.step_lr to technique 4's ε (hpc-ncsn plan; a geometric ladder)")
        if self.steps_needed is not None:
            ways.append(f"raise sampler.steps_per_level to >= {self.steps_needed}")
        chain = "Langevin chain" if self.kind == "langevin" else f"{self.kind} chain"
        return (f"arm {self.arm}: with the exact score its {chain} ends at {self.end_noise:.3g} σ_L "
                f"(limit {self.limit:g} σ_L; {cause}); {', or '.join(ways)}, or pass {flag} {self.arm.split(',')[0]} "
                "to run it anyway")


def end_noise(sigmas: Sequence[float], *, step_rule: str, steps: int, step_lr: float = 0.0, snr: float = 0.0,
              dim: int | None = None, init: str = "gaussian", kind: str = "langevin") -> float:
    """The chain's noise at the end of the last level in units of σ_L, sqrt(u_L), before the final denoising
    step, from the sampler's start: 'gaussian' N(μ, σ_1²I), u = 1 (spread 2/D); 'uniform' U(0, 1) about a
    point at the centre of the pixel range, u = 1/(12σ_1²)."""
    return math.sqrt(_trace(sigmas, step_rule, steps, step_lr, snr, dim, init, kind)[-1])


def _trace(sigmas, step_rule, steps, step_lr, snr, dim, init, kind="langevin") -> list[float]:
    return chain_noise(sigmas, step_rule=step_rule, steps=steps, step_lr=step_lr, snr=snr, dim=dim,
                       initial=_initial(init, float(sigmas[0]), dim), kind=kind)


def audit(sigmas: Sequence[float], *, step_rule: str, steps: int, step_lr: float = 0.0, snr: float = 0.0,
          dim: int | None = None, init: str = "gaussian", arm: str = "", limit: float = END_NOISE_LIMIT,
          kind: str = "langevin") -> AuditRecord:
    """Audit a sampler on the ladder `sigmas` (σ_1 > … > σ_L) with the exact single-point score: the chain's
    noise per level and at the end (`end_noise`); for annealed Langevin (`kind` 'langevin') also r_min, r_needed
    and steps_needed. `steps` Langevin steps run at each level: T, the corrector steps of 'ancestral', 0 for
    'ode'/'edm' (`chain_noise`)."""
    sigmas = [float(sigma) for sigma in sigmas]
    rule = dict(step_lr=step_lr, snr=snr, dim=dim, init=init, kind=kind)
    level_noise = tuple(math.sqrt(u) for u in _trace(sigmas, step_rule, steps, step_lr, snr, dim, init, kind))
    bound = needed = None
    if step_rule == "snr" and kind == "langevin" and steps:  # r_min is the Langevin ladder's stability edge
        bound = r_min(max(high / low for high, low in zip(sigmas, sigmas[1:])), steps)
        needed = None if math.isinf(bound) else _smallest_snr(
            lambda r: end_noise(sigmas, step_rule="snr", steps=steps, **{**rule, "snr": r}) <= limit, bound)
    return AuditRecord(
        arm=arm, step_rule=step_rule, steps_per_level=steps, step_lr=step_lr, snr=snr, dim=dim,
        num_levels=len(sigmas), end_noise=level_noise[-1], level_noise=level_noise, r_min=bound, r_needed=needed,
        steps_needed=_smallest_steps(lambda t: end_noise(sigmas, step_rule=step_rule, steps=t, **rule) <= limit)
        if kind == "langevin" else None, limit=limit, kind=kind,
        gamma=max(high / low for high, low in zip(sigmas, sigmas[1:])), span=sigmas[0] / sigmas[-1],
    )


def _round_up(r: float) -> float:
    return math.ceil(r * 1000 - 1e-9) / 1000


def _smallest_snr(passes, start: float, tolerance: float = 1e-5) -> float | None:
    """The smallest r ≥ `start` with passes(r), by doubling then bisection; None if none up to 4."""
    if passes(start):
        return start
    low, high = start, start * 1.25
    while not passes(high):
        if high > _MAX_SNR:
            return None
        low, high = high, high * 1.25
    while high - low > tolerance:
        middle = 0.5 * (low + high)
        low, high = (low, middle) if passes(middle) else (middle, high)
    return high


def _initial(init: str, sigma_max: float, dim: int | None) -> tuple[float, float]:
    spread = 0.0 if dim is None else 1.0 / dim
    if init == "gaussian":
        return 1.0, 2.0 * spread  # w = ‖z‖²/D, variance 2/D
    if init == "uniform":
        mean = 1.0 / (12.0 * sigma_max**2)  # Var U(0, 1) = 1/12; Var (U − 1/2)² = 1/180
        return mean, spread / (180.0 * sigma_max**4)
    raise ValueError(f"unknown init {init!r}; choose 'uniform' or 'gaussian'")


def _smallest_steps(passes) -> int | None:
    """The smallest T in 1..10,000 with passes(T), by doubling then bisection (passing is monotone in T)."""
    high = 1
    while not passes(high):
        if high >= _MAX_STEPS:
            return None
        high = min(2 * high, _MAX_STEPS)
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if passes(middle) else (middle, high)
    return high


def audit_config(config: Config, dim: int | None = None, *, arm: str | None = None, limit: float = END_NOISE_LIMIT,
                 noise: NoiseConfig | None = None, sampler: SamplerConfig | None = None) -> AuditRecord:
    """Audit the sampler a config runs (its ladder, step rule, T, ε or r, init) for data of dimension D
    (default: the config's, channels × image_size², 2 for toy2d).

    `noise`/`sampler` replace the config's sections (e.g. a sampling ladder apart from the training one);
    `arm` names the record (default: the config's arm, else its ladder/step rule).
    """
    noise, sampler = noise or config.noise, sampler or config.sampler
    if dim is None:
        dim = 2 if config.data.name == "toy2d" else config.data.channels * config.data.image_size**2
    name = arm or arm_of(replace(config, noise=noise, sampler=sampler)) or f"{noise.ladder}/{sampler.step_rule}"
    from .sampling import sampling_ladder  # torch, only once an audit runs (commands' --help stays light)
    from .schedules import planned_step_lr

    sigmas = sampling_ladder(noise, sampler).tolist()  # the ladder the sampler runs, not the one trained on
    step_lr = sampler.step_lr or planned_step_lr(sigmas, sampler.steps_per_level)  # 0: technique 4's ε
    steps = {"langevin": sampler.steps_per_level, "ancestral": sampler.corrector_steps}.get(sampler.kind, 0)
    return audit(sigmas, step_rule=sampler.step_rule, steps=steps, step_lr=step_lr, snr=sampler.snr, dim=dim,
                 init=sampler.init, arm=name, limit=limit, kind=sampler.kind)


def check(record: AuditRecord, *, override: bool | Collection[str] = False, flag: str = OVERRIDE_FLAG,
          ) -> AuditRecord:
    """The record if its chain settles; if `override` (True, or a collection naming its arm), the record
    marked overridden; else UnstableSampler with the one-line reason."""
    if record.stable or record.overridden:
        return record
    if override is True or (not isinstance(override, bool) and record.arm in override):
        return replace(record, overridden=True)
    raise UnstableSampler(record.message(flag))


def audit_arm(config: Config, arm: str, *, name: str | None = None, override: bool | Collection[str] = False,
              flag: str = OVERRIDE_FLAG) -> AuditRecord:
    """Audit one arm's resolved config before anything runs: an unsettled chain is refused in one line
    (UnstableSampler) unless `override` covers the arm (True, or a collection naming it), or the arm's preset
    says the unsettled chain is what it tests (config.Arm.unsettled_by_design: the linear-ladder arms); those
    run, marked with the reason. `name` labels the record (default: the arm)."""
    record = audit_config(config, arm=name or arm)
    design = ARMS[arm].unsettled_by_design if arm in ARMS else ""
    if not record.stable and design:
        record = replace(record, overridden=True, reason=design)
    if not record.stable and not record.overridden and (override is True or (
            not isinstance(override, bool) and arm in override)):
        record = replace(record, overridden=True, reason=f"{flag} given")
    return check(record, flag=flag)


def audit_arms(configs: Mapping[str, Config], *, override: bool | Collection[str] = False,
               flag: str = OVERRIDE_FLAG) -> dict[str, AuditRecord]:
    """`audit_arm` for each {arm: resolved config}."""
    return {arm: audit_arm(config, arm, override=override, flag=flag) for arm, config in configs.items()}
