"""Settings of the pipeline stages (paper §2.1–2.2), as plain dataclasses.

They live apart from the stage code so that ``emoji3d.config`` can validate the
``[pipeline.*]`` tables of config.toml at start-up without importing torch.
Each default is the value the cited reference uses, or is justified inline.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field


def _check(obj, **rules) -> None:
    """Raise ValueError('field must be ...') for the first violated rule."""
    for name, (ok, what) in rules.items():
        if not ok:
            raise ValueError(f"{name} must be {what}, got {getattr(obj, name)!r}")


@dataclass(frozen=True)
class StyleFinetuneConfig:
    """Stage 2 (Eq. 1 + 4). Defaults follow JoJoGAN."""

    steps: int = 300
    lr: float = 2e-3
    beta1: float = 0.0
    beta2: float = 0.99
    batch: int = 4              # style-mixed latents per step
    alpha: float = 0.5          # Eq. 1 weight of w_e on the mixed layers (0 = JoJoGAN's random fine layers)
    mixed_from: int = 7         # first mixed W+ layer (JoJoGAN: 7..17 of 18)
    mixed_to: int = 0           # one past the last mixed layer; 0 = through the last layer

    def __post_init__(self) -> None:
        _check(self, steps=(self.steps >= 0, ">= 0"), lr=(self.lr > 0, "> 0"), batch=(self.batch >= 1, ">= 1"),
               alpha=(0 <= self.alpha <= 1, "within [0, 1]"), beta2=(0 <= self.beta2 < 1, "within [0, 1)"),
               mixed_from=(self.mixed_from >= 0, ">= 0"),
               mixed_to=(self.mixed_to == 0 or self.mixed_to > self.mixed_from, "0 or > mixed_from"))


@dataclass(frozen=True)
class InversionConfig:
    """Stage 3 (Eq. 2). Defaults follow the EG3D / StyleGAN2 projector."""

    steps: int = 500
    lr: float = 0.01
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    initial_noise_factor: float = 0.05
    noise_ramp_length: float = 0.75
    noise_reg_weight: float = 1e5
    lpips_size: int = 256       # LPIPS on 256 px, as the projector does
    w_avg_samples: int = 10000

    def __post_init__(self) -> None:
        _check(self, steps=(self.steps >= 0, ">= 0"), lr=(self.lr > 0, "> 0"),
               noise_reg_weight=(self.noise_reg_weight >= 0, ">= 0"), lpips_size=(self.lpips_size >= 32, ">= 32"),
               w_avg_samples=(self.w_avg_samples >= 2, ">= 2"))


@dataclass(frozen=True)
class PivotalTuningConfig:
    """Stage 4 (Eq. 3). Defaults follow PTI (its LPIPS is AlexNet's, on the whole render, and it
    stops once that reaches ``stop_lpips``); the ID term is Your3dEmoji's."""

    steps: int = 350            # at most; PTI's max_pti_steps
    lr: float = 3e-4
    lambda_l2: float = 1.0
    lambda_lpips: float = 1.0
    lambda_id: float = 0.1      # PTI-style ArcFace weight; higher starts to fight LPIPS on 512 px renders
    lpips_size: int = 512       # LPIPS on at most this many px: PTI's whole 512 px render (AlexNet there
                                # costs a fifth of VGG16 at 256 px)
    stop_lpips: float = 0.06    # PTI's LPIPS_value_threshold: stop once the LPIPS term is this low; 0 = never

    def __post_init__(self) -> None:
        _check(self, steps=(self.steps >= 0, ">= 0"), lr=(self.lr > 0, "> 0"),
               lpips_size=(self.lpips_size >= 32, ">= 32"), stop_lpips=(self.stop_lpips >= 0, ">= 0"),
               lambda_l2=(self.lambda_l2 >= 0, ">= 0"), lambda_lpips=(self.lambda_lpips >= 0, ">= 0"),
               lambda_id=(self.lambda_id >= 0, ">= 0"))


@dataclass(frozen=True)
class DualConfig:
    """Stage 5 (Eq. 5). The paper gives no numbers; see engine/avatar/dual.py for the reasoning."""

    steps: int = 300            # rounds; each = steps_3d updates of EG3D (+ one of the 2D branch, see below)
    steps_3d: int = 1
    lr_3d: float = 1e-4         # below PTI's 3e-4: move the look, keep the geometry
    lr_2d: float = 4e-4         # a fifth of stage 2, on every 2nd round: the 2D branch only adjusts
    lambda_1: float = 0.1       # LPIPS to the exemplar (another face): a light pull towards its look
    lambda_2: float = 1.0       # LPIPS to the warped 2D cartoon: the main perceptual guide
    lambda_style_2d: float = 1.0  # stage-2 loss kept on the 2D branch while it adjusts
    update_2d: bool = True
    update_2d_every: int = 2    # rounds between two 2D updates; the rounds between reuse the cartoon (dual.py)
    lpips_size: int = 256
    style_batch: int = 2        # style-mixed latents of the 2D style loss (stage 2 uses 4; see dual.py)
    style_every: int = 2        # 2D updates between two 2D style-loss terms (1 = every one; see dual.py)

    def __post_init__(self) -> None:
        _check(self, steps=(self.steps >= 0, ">= 0"), steps_3d=(self.steps_3d >= 1, ">= 1"),
               lr_3d=(self.lr_3d > 0, "> 0"), lr_2d=(self.lr_2d > 0, "> 0"), lambda_1=(self.lambda_1 >= 0, ">= 0"),
               lambda_2=(self.lambda_2 >= 0, ">= 0"), lambda_style_2d=(self.lambda_style_2d >= 0, ">= 0"),
               lpips_size=(self.lpips_size >= 32, ">= 32"), style_batch=(self.style_batch >= 1, ">= 1"),
               style_every=(self.style_every >= 1, ">= 1"), update_2d_every=(self.update_2d_every >= 1, ">= 1"))


PRECISIONS = ("auto", "bf16", "fp32")
# "off", or the torch.compile backend of the generator passes (engine/avatar/compiled.py)
COMPILE_BACKENDS = ("off", "inductor", "aot_eager", "eager")


@dataclass(frozen=True)
class PipelineConfig:
    """``precision``: the optimisation stages' autocast ("bf16": forward passes and losses in
    bfloat16 with float32 master weights and optimiser; "fp32": float32 throughout; "auto":
    bf16 on CUDA, fp32 on the CPU). See engine/avatar/steps.py. ``cuda_graphs``: on a CUDA
    device, capture each optimisation step once as a CUDA graph and replay it (the same
    arithmetic, launched at once; see engine/avatar/step_graph.py); no effect on the CPU.
    ``channels_last``: the generators' activations in the optimisation stages are channels-last
    (NHWC in memory), and so are the images the loss networks read, so cuDNN converts no layouts
    around their convolutions (the same values up to rounding; engine/nets/stylegan2/synthesis.py);
    off until a GPU run shows it pays. ``concurrent_branches``: on a CUDA device, the parts of a
    step that do not read each other's results (stage 5's 2D cartoon, style-loss batch and render;
    PTI's LPIPS and ArcFace terms; the inversion's render and noise regularisation) run side by
    side on CUDA streams (the same values; engine/avatar/branches.py); off until a GPU run shows
    it pays. ``compile``: the generator passes of the optimisation stages under ``torch.compile``
    with this backend ("inductor" fuses the element-wise work between the kernels; "aot_eager" and
    "eager" only trace, for debugging), or "off"; the same values up to rounding
    (engine/avatar/compiled.py); off until a GPU run shows it pays."""

    precision: str = "auto"
    cuda_graphs: bool = True
    channels_last: bool = False
    concurrent_branches: bool = False
    compile: str = "off"
    style: StyleFinetuneConfig = field(default_factory=StyleFinetuneConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    pti: PivotalTuningConfig = field(default_factory=PivotalTuningConfig)
    dual: DualConfig = field(default_factory=DualConfig)

    def __post_init__(self) -> None:
        _check(self, precision=(self.precision in PRECISIONS, f"one of {list(PRECISIONS)}"),
               cuda_graphs=(isinstance(self.cuda_graphs, bool), "true or false"),
               channels_last=(isinstance(self.channels_last, bool), "true or false"),
               concurrent_branches=(isinstance(self.concurrent_branches, bool), "true or false"),
               compile=(self.compile in COMPILE_BACKENDS, f"one of {list(COMPILE_BACKENDS)}"))

    def resolved_precision(self, device_type: str) -> str:
        """"bf16" or "fp32" on a device of this type ("cuda", "cpu", ...)."""
        if self.precision != "auto":
            return self.precision
        return "bf16" if device_type == "cuda" else "fp32"

    def digest(self, *parts: str) -> str:
        """A stable digest of selected sub-configs, for cache keys."""
        d = {p: dataclasses.asdict(getattr(self, p)) for p in parts}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def reduced(self, steps: int) -> "PipelineConfig":
        """The same settings with every stage run for exactly ``steps`` steps (tests, benchmarks
        that time steps, the CPU demo): PTI's early stop is off."""
        r = dataclasses.replace
        return r(self, style=r(self.style, steps=steps), inversion=r(self.inversion, steps=steps, w_avg_samples=min(
            self.inversion.w_avg_samples, 256)), pti=r(self.pti, steps=steps, stop_lpips=0.0),
            dual=r(self.dual, steps=steps))
