"""EG3D tri-plane generator (``TriPlaneGenerator``), OSG decoder, typed config and slim presets.

Same architecture, parameter names and forward maths as NVlabs EG3D
``training/triplane.py``; an official state dict (``backbone.*``,
``superresolution.*``, ``decoder.net.*``) loads unchanged.

Pieces and conventions:

* ``mapping(z [N,z_dim], c [N,25]) -> ws [N,14,w_dim]``. The conditioning
  label is multiplied by ``rendering.c_scale`` (zeroed when
  ``c_gen_conditioning_zero``); truncation ``w_avg + psi (w - w_avg)`` on the
  first ``truncation_cutoff`` ws (all when None).
* ``planes(ws) -> [N,3,32,256,256]``: the StyleGAN2 backbone's 96-channel
  256px output read as 3 planes x 32 channels (plane order and axes: see
  ``engine.nets.volume``). The planes are *returned*; nothing is cached.
* ``render(planes, ws, c)``: volume rendering at the neural rendering
  resolution R (from the config, overridable per call), then
  super-resolution from the last w. Cameras may outnumber plane sets:
  with P plane sets and B = P*V cameras, camera b uses plane set b // V, and
  the planes are evaluated once for all their views.
  Outputs (NCHW float32): ``image`` [B,3,S,S] (super-resolved, ~[-1,1]),
  ``image_raw`` [B,3,R,R] (first 3 feature channels, [-1,1]),
  ``image_features`` [B,32,R,R], ``image_depth`` [B,1,R,R] (scene units along
  the ray), ``image_alpha`` [B,1,R,R] (accumulated opacity in [0,1]).
* ``sample_points(planes, coords)``: raw density (before the marcher's
  ``softplus(sigma - 1)``) and 32 colour/feature channels in [-0.001, 1.001]
  at world points, for meshes and mattes.
* Sampling mode: ``"deterministic"`` (default; stickers, golden fixtures) or
  ``"stochastic"`` with a ``torch.Generator``. Backbone noise: ``noise_mode``
  'const' (default here; NVlabs' layer default is 'random'), 'random' (with
  ``noise_generator``) or 'none', or explicit ``noise_inputs`` per layer.
  Super-resolution noise follows ``rendering.superresolution_noise_mode``
  ('none' in the official configs).

The config (:class:`EG3DConfig`, frozen) holds everything the outputs depend
on, the neural rendering resolution included; the generator keeps no other
state. Its JSON form (the ``config`` of a pretrained folder,
:mod:`engine.weights.pretrained`) is ``{"class_name":
"training.triplane.TriPlaneGenerator", "init_kwargs": {...},
"neural_rendering_resolution": R}``: the official constructor arguments.
State-dict keys are the official ones. Official pickles are read by
:mod:`engine.weights.convert`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from engine.nets import volume
from engine.nets.stylegan2 import FullyConnectedLayer, Generator as StyleGAN2Backbone
from engine.nets.superresolution import sr_class
from engine.weights.errors import WeightsError
from engine.weights.pretrained import PretrainedConfig, PretrainedMixin

PLANE_CHANNELS = 32
PLANE_RESOLUTION = 256
DECODER_HIDDEN = 64
CLASS_NAME = "training.triplane.TriPlaneGenerator"
DEFAULT_POINTS_PER_PASS = 1 << 21  # ~2M sample points per decoder call (~1 GB of plane features in float32)

# Rendering keys we interpret; everything else in rendering_kwargs (training
# regularisers such as density_reg, gpc_reg_prob) is kept verbatim in ``extra``.
_RENDER_KEYS = (
    "depth_resolution", "depth_resolution_importance", "ray_start", "ray_end", "box_warp", "clamp_mode",
    "disparity_space_sampling", "white_back", "density_noise", "superresolution_module",
    "superresolution_noise_mode", "sr_antialias", "c_gen_conditioning_zero", "c_scale", "decoder_lr_mul",
    "avg_camera_radius", "avg_camera_pivot", "image_resolution",
)


@dataclass(frozen=True)
class RenderingConfig:
    """EG3D ``rendering_kwargs`` (FFHQ-512 defaults)."""

    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    ray_start: float | str = 2.25
    ray_end: float | str = 3.3
    box_warp: float = 1.0
    clamp_mode: str = "softplus"
    disparity_space_sampling: bool = False
    white_back: bool = False
    density_noise: float = 0.0
    superresolution_module: str = "training.superresolution.SuperresolutionHybrid8XDC"
    superresolution_noise_mode: str = "none"
    sr_antialias: bool = True
    c_gen_conditioning_zero: bool = False
    c_scale: float = 1.0
    decoder_lr_mul: float = 1.0
    avg_camera_radius: float = 2.7
    avg_camera_pivot: tuple[float, float, float] = (0.0, 0.0, 0.2)
    image_resolution: int | None = 512
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, kw: Mapping[str, Any]) -> "RenderingConfig":
        """From an official ``rendering_kwargs`` dict. A missing ``c_scale`` means 0, as in the official mapping."""
        if "superresolution_module" not in kw:
            raise ValueError("rendering_kwargs needs 'superresolution_module'")
        known = {k: kw[k] for k in _RENDER_KEYS if k in kw}
        if "avg_camera_pivot" in known:
            known["avg_camera_pivot"] = tuple(float(v) for v in known["avg_camera_pivot"])
        known.setdefault("c_scale", 0.0)
        extra = {k: v for k, v in kw.items() if k not in _RENDER_KEYS}
        return cls(**known, extra=dict(extra))

    def to_kwargs(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in _RENDER_KEYS}
        out["avg_camera_pivot"] = list(self.avg_camera_pivot)
        if out["image_resolution"] is None:
            del out["image_resolution"]
        out.update(self.extra)
        return out

    def render_options(self, sampling: volume.SamplingMode = "deterministic", **overrides) -> volume.RenderOptions:
        base = dict(
            depth_resolution=self.depth_resolution, depth_resolution_importance=self.depth_resolution_importance,
            ray_start=self.ray_start, ray_end=self.ray_end, box_warp=self.box_warp, clamp_mode=self.clamp_mode,
            disparity_space_sampling=self.disparity_space_sampling, white_back=self.white_back,
            density_noise=self.density_noise, sampling=sampling,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return volume.RenderOptions(**base)


@dataclass(frozen=True)
class EG3DConfig(PretrainedConfig):
    """Constructor arguments of ``TriPlaneGenerator`` (official names) plus the neural rendering resolution.

    Defaults of the backbone fields are the NVlabs constructor defaults, so an
    ``init_kwargs`` dict that omits a key behaves as the official code does.
    """

    z_dim: int = 512
    c_dim: int = 25
    w_dim: int = 512
    img_resolution: int = 512
    img_channels: int = 3
    sr_num_fp16_res: int = 0
    mapping_kwargs: Mapping[str, Any] = field(default_factory=dict)
    rendering: RenderingConfig = field(default_factory=RenderingConfig)
    sr_kwargs: Mapping[str, Any] = field(default_factory=dict)
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 4
    conv_clamp: float | None = 256
    fused_modconv_default: bool | str = True
    neural_rendering_resolution: int = 64
    synthesis_extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.neural_rendering_resolution < 1:
            raise ValueError(f"neural_rendering_resolution must be >= 1, got {self.neural_rendering_resolution}")
        sr_class(self.rendering.superresolution_module)  # validates the name

    _SYN_KEYS = ("channel_base", "channel_max", "num_fp16_res", "conv_clamp", "fused_modconv_default")

    @classmethod
    def from_init_kwargs(cls, init_kwargs: Mapping[str, Any], neural_rendering_resolution: int = 64) -> "EG3DConfig":
        kw = dict(init_kwargs)
        for req in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "rendering_kwargs"):
            if req not in kw:
                raise ValueError(f"EG3D init_kwargs lacks {req!r}")
        args: dict[str, Any] = {k: kw.pop(k) for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")}
        args["sr_num_fp16_res"] = kw.pop("sr_num_fp16_res", 0)
        args["mapping_kwargs"] = dict(kw.pop("mapping_kwargs", {}) or {})
        args["sr_kwargs"] = dict(kw.pop("sr_kwargs", {}) or {})
        args["rendering"] = RenderingConfig.from_kwargs(kw.pop("rendering_kwargs"))
        for k in cls._SYN_KEYS:
            if k in kw:
                args[k] = kw.pop(k)
        args["synthesis_extra"] = kw  # anything else goes to the backbone, as **synthesis_kwargs
        return cls(**args, neural_rendering_resolution=int(neural_rendering_resolution))

    def to_init_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(
            z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim, img_resolution=self.img_resolution,
            img_channels=self.img_channels, sr_num_fp16_res=self.sr_num_fp16_res,
            mapping_kwargs=dict(self.mapping_kwargs), rendering_kwargs=self.rendering.to_kwargs(),
            sr_kwargs=dict(self.sr_kwargs),
        )
        out.update({k: getattr(self, k) for k in self._SYN_KEYS})
        out.update(self.synthesis_extra)
        return out

    def to_json_dict(self) -> dict[str, Any]:
        return {"class_name": CLASS_NAME, "init_kwargs": self.to_init_kwargs(),
                "neural_rendering_resolution": self.neural_rendering_resolution}

    @classmethod
    def from_json_dict(cls, data: Any, source: str = "config") -> "EG3DConfig":
        if not isinstance(data, Mapping) or set(data) != {"class_name", "init_kwargs", "neural_rendering_resolution"}:
            keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise WeightsError(f"{source}: an EG3D config has exactly class_name, init_kwargs and "
                               f"neural_rendering_resolution, got {keys}", file=source)
        if data["class_name"] != CLASS_NAME:
            raise WeightsError(f"{source}: class_name {data['class_name']!r}, expected {CLASS_NAME!r}", file=source)
        try:
            return cls.from_init_kwargs(data["init_kwargs"], int(data["neural_rendering_resolution"]))
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"{source}: invalid EG3D config ({exc})", file=source) from None

    def replace(self, **changes) -> "EG3DConfig":
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- presets

def ffhq512_config() -> EG3DConfig:
    """The published FFHQ-512 generator (``ffhqrebalanced512-128.pkl``): 8XDC SR, neural rendering 128."""
    return EG3DConfig(
        sr_num_fp16_res=4, mapping_kwargs={"num_layers": 2},
        rendering=RenderingConfig(c_scale=1.0, extra={"gpc_reg_prob": 0.5, "density_reg": 0.25,
                                                      "density_reg_p_dist": 0.004, "reg_type": "l1"}),
        sr_kwargs={"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only"},
        channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=None,
        fused_modconv_default="inference_only", neural_rendering_resolution=128,
    )


PRESETS: dict[str, EG3DConfig] = {}


def _build_presets() -> None:
    full = ffhq512_config()
    # Same architecture as the golden fixture: FFHQ-512 layout, narrow backbone, 64px neural render, 24+24 samples.
    PRESETS["slim512"] = full.replace(
        channel_base=4096, channel_max=64, neural_rendering_resolution=64, sr_kwargs={},
        rendering=dataclasses.replace(full.rendering, depth_resolution=24, depth_resolution_importance=24),
    )
    # CPU demo / fast tests: 128px output through Hybrid2X, 32px neural render, 12+12 samples.
    PRESETS["slim128"] = full.replace(
        img_resolution=128, channel_base=2048, channel_max=32, neural_rendering_resolution=32, sr_kwargs={},
        rendering=dataclasses.replace(full.rendering, depth_resolution=12, depth_resolution_importance=12,
                                      superresolution_module="training.superresolution.SuperresolutionHybrid2X",
                                      image_resolution=128),
    )
    PRESETS["ffhq512"] = full


_build_presets()


# ----------------------------------------------------------------------------- modules

# The decoder's colours/features: sigmoid(x) * COLOUR_SCALE + COLOUR_SHIFT (the official
# ``sigmoid(x) * (1 + 2*0.001) - 0.001``).
COLOUR_SCALE, COLOUR_SHIFT = 1 + 2 * 0.001, -0.001


class OSGDecoder(torch.nn.Module):
    """Tri-plane feature decoder: mean over planes, FC 32->64, softplus, FC 64->1+32.

    Returns raw sigma [N,M,1] (channel 0) and rgb/features [N,M,32] =
    sigmoid(x) * (1 + 2*0.001) - 0.001, or with ``map_colours=False`` sigmoid(x) alone (a
    renderer that applies the map to its composites instead, ``volume.map_composite``).
    """

    def __init__(self, n_features: int = PLANE_CHANNELS, hidden: int = DECODER_HIDDEN, output_dim: int = PLANE_CHANNELS,
                 lr_multiplier: float = 1.0):
        super().__init__()
        self.hidden_dim = hidden
        self.net = torch.nn.Sequential(
            FullyConnectedLayer(n_features, hidden, lr_multiplier=lr_multiplier),
            torch.nn.Softplus(),
            FullyConnectedLayer(hidden, 1 + output_dim, lr_multiplier=lr_multiplier),
        )

    def forward(self, sampled_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sampled_features [N, n_planes, M, C] -> (sigma [N,M,1], rgb [N,M,output_dim])."""
        return self.decode(sampled_features.mean(1))

    def decode(self, x: torch.Tensor, map_colours: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Plane-averaged features [N,M,C] -> (sigma [N,M,1], rgb [N,M,output_dim])."""
        n, m, c = x.shape
        x = self.net(x.reshape(n * m, c)).reshape(n, m, -1)
        # One split, not two slices: its backward writes the [N, M, 33] gradient once (two slices'
        # backward each fill a zero tensor of that size, then the two are added).
        sigma, raw_rgb = x.split([1, x.shape[-1] - 1], dim=-1)
        rgb = torch.sigmoid(raw_rgb)
        return sigma, (rgb * COLOUR_SCALE + COLOUR_SHIFT if map_colours else rgb)


class TriPlaneGenerator(PretrainedMixin, torch.nn.Module):
    """EG3D generator. See the module docstring for the API and conventions."""

    config_class = EG3DConfig
    build_on_meta = False  # the StyleGAN2 backbone's filters are made on the CPU

    def __init__(self, config: EG3DConfig):
        self._check_config(config)
        super().__init__()
        self.config = config
        self.z_dim, self.c_dim, self.w_dim = config.z_dim, config.c_dim, config.w_dim
        self.img_resolution, self.img_channels = config.img_resolution, config.img_channels
        syn = {k: getattr(config, k) for k in EG3DConfig._SYN_KEYS}
        syn.update(config.synthesis_extra)
        self.backbone = StyleGAN2Backbone(config.z_dim, config.c_dim, config.w_dim, img_resolution=PLANE_RESOLUTION,
                                          img_channels=3 * PLANE_CHANNELS, mapping_kwargs=dict(config.mapping_kwargs),
                                          **syn)
        sr = sr_class(config.rendering.superresolution_module)
        self.superresolution = sr(channels=PLANE_CHANNELS, img_resolution=config.img_resolution,
                                  sr_num_fp16_res=config.sr_num_fp16_res, sr_antialias=config.rendering.sr_antialias,
                                  **dict(config.sr_kwargs))
        self.decoder = OSGDecoder(PLANE_CHANNELS, DECODER_HIDDEN, PLANE_CHANNELS, config.rendering.decoder_lr_mul)

    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    def init_from_seed(self, generator: torch.Generator) -> None:
        """Small seeded w_avg, noise strengths and biases, so that every term of the forward
        pass matters in a random network (as in the reference fixtures)."""
        for name, tensor in sorted(self.named_parameters()) + sorted(self.named_buffers()):
            if name.endswith("noise_strength"):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("w_avg"):
                tensor.copy_(0.5 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith(".bias") and "affine" not in name:
                tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))

    # -- latent ---------------------------------------------------------------
    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_emas: bool = False, impl: str = "auto") -> torch.Tensor:
        """z [N,z_dim], c [N,25] (the *conditioning* camera) -> ws [N,num_ws,w_dim]."""
        if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
            raise ValueError(f"camera labels must be [N,{self.c_dim}], got {None if c is None else tuple(c.shape)}")
        if self.config.rendering.c_gen_conditioning_zero:
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * self.config.rendering.c_scale, truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff, update_emas=update_emas, impl=impl)

    # -- planes ---------------------------------------------------------------
    def planes(self, ws: torch.Tensor, *, noise_mode: str = "const", noise_inputs: Mapping[str, torch.Tensor] | None = None,
               noise_generator: torch.Generator | None = None, **synthesis_kwargs) -> torch.Tensor:
        """ws [N,num_ws,w_dim] -> planes [N,3,32,256,256]."""
        if noise_generator is not None:
            synthesis_kwargs["noise_generator"] = noise_generator
        raw = self.backbone.synthesis(ws, noise_inputs=noise_inputs, noise_mode=noise_mode, **synthesis_kwargs)
        return raw.view(raw.shape[0], 3, PLANE_CHANNELS, raw.shape[-2], raw.shape[-1])  # [N,3,32,H,W]

    # -- queries --------------------------------------------------------------
    def field(self, planes: torch.Tensor, *, map_colours: bool = True) -> volume.Field:
        """The density/colour field of plane sets [P,3,32,H,W] as a ``volume.Field``; with
        ``map_colours=False`` its colours before the decoder's affine map (see ``OSGDecoder``)."""
        box_warp = self.config.rendering.box_warp
        decoder = self.decoder

        def query(coords: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            del dirs  # the OSG decoder ignores view directions
            return decoder.decode(volume.sample_plane_mean(planes, coords, box_warp), map_colours=map_colours)

        return query

    def sample_points(self, planes: torch.Tensor, coords: torch.Tensor, directions: torch.Tensor | None = None,
                      *, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw sigma [P,M,1] and rgb/features [P,M,32] at world points coords [P,M,3]."""
        if coords.ndim != 3 or coords.shape[-1] != 3 or coords.shape[0] != planes.shape[0]:
            raise ValueError(f"coords must be [{planes.shape[0]},M,3], got {tuple(coords.shape)}")
        dirs = torch.zeros_like(coords) if directions is None else directions
        f = self.field(planes)
        if chunk is None or coords.shape[1] <= chunk:
            return f(coords, dirs)
        parts = [f(coords[:, i:i + chunk], dirs[:, i:i + chunk]) for i in range(0, coords.shape[1], chunk)]
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)

    # -- rendering ------------------------------------------------------------
    def render_options(self, sampling: volume.SamplingMode = "deterministic", **overrides) -> volume.RenderOptions:
        return self.config.rendering.render_options(sampling, **overrides)

    def render(self, planes: torch.Tensor, ws: torch.Tensor, c: torch.Tensor, *,
               neural_rendering_resolution: int | None = None, sampling: volume.SamplingMode = "deterministic",
               generator: torch.Generator | None = None, options: volume.RenderOptions | None = None,
               depth_resolution: int | None = None, depth_resolution_importance: int | None = None,
               superresolution: bool = True, max_points_per_pass: int | None = DEFAULT_POINTS_PER_PASS,
               official_raw_aliasing: bool = False, **sr_kwargs) -> dict[str, torch.Tensor]:
        """Render cameras c [B,25] from planes [P,3,32,H,W] (B = P*V) and super-resolve with ws.

        ``ws`` is [P,...] or [B,...]. ``max_points_per_pass`` bounds memory:
        rays are marched in chunks so that one decoder call sees at most that
        many points (None: everything at once). Deterministic renders do not
        depend on it.

        ``official_raw_aliasing``: reproduce an artefact of the official code.
        With the 2X/4X heads and no resize before the SR (e.g. Hybrid2X at a
        64px neural render), the official SR adds its first block's RGB *in
        place* to the tensor that is also returned as ``image_raw``. Our
        default returns the clean render; set this to match official outputs
        bit for bit (the reference checker does). ``image`` is unaffected.
        """
        if planes.ndim != 5 or planes.shape[1:3] != (3, PLANE_CHANNELS):
            raise ValueError(f"planes must be [P,3,{PLANE_CHANNELS},H,W], got {tuple(planes.shape)}")
        if c.ndim != 2 or c.shape[1] != 25:
            raise ValueError(f"camera labels must be [B,25], got {tuple(c.shape)}")
        c = c.to(device=planes.device, dtype=planes.dtype)
        p, b = planes.shape[0], c.shape[0]
        if b % p != 0:
            raise ValueError(f"{b} cameras cannot be shared evenly by {p} plane sets")
        v = b // p
        if ws.shape[0] not in (p, b):
            raise ValueError(f"ws has batch {ws.shape[0]}, expected {p} (per plane set) or {b} (per camera)")
        res = int(neural_rendering_resolution or self.config.neural_rendering_resolution)
        opts = options or self.render_options(sampling, depth_resolution=depth_resolution,
                                              depth_resolution_importance=depth_resolution_importance)
        ray_chunk = None
        if max_points_per_pass:
            per_ray = opts.depth_resolution + opts.depth_resolution_importance
            ray_chunk = max(1, int(max_points_per_pass) // (p * per_ray))
        # The decoder's affine colour map is applied to the composites, [B,32,R,R], instead of to the
        # samples' colours, [P,R*R*S,32] (S = 96 at full size): the same values up to rounding, and
        # three passes over the samples' colours fewer per render, forward and backward.
        out = volume.render_views(self.field(planes, map_colours=False), c[:, :16].reshape(b, 4, 4),
                                  c[:, 16:25].reshape(b, 3, 3), res, opts, n_fields=p, generator=generator,
                                  ray_chunk=ray_chunk)
        feats = volume.map_composite(out["features"], out["opacity"], COLOUR_SCALE, COLOUR_SHIFT,
                                     white_back=opts.white_back)  # [B,32,R,R]
        rgb = feats[:, :3]
        result = {"image_raw": rgb, "image_features": feats, "image_depth": out["depth"], "image_alpha": out["opacity"]}
        if superresolution:
            ws_b = ws if ws.shape[0] == b else ws.repeat_interleave(v, dim=0)
            sr_kwargs.setdefault("noise_mode", self.config.rendering.superresolution_noise_mode)
            image, rgb0, resized = self.superresolution.forward_detailed(rgb, feats, ws_b, **sr_kwargs)
            result["image"] = image
            if official_raw_aliasing and not self.superresolution.first_block_upsamples and not resized:
                result["image_raw"] = rgb0
                result["image_features"] = torch.cat([rgb0, feats[:, 3:]], 1)
        return result

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, *, noise_mode: str = "const",
                  noise_inputs: Mapping[str, torch.Tensor] | None = None, noise_generator: torch.Generator | None = None,
                  impl: str = "auto", fused_modconv: bool | str | None = None, force_fp32: bool = False,
                  channels_last: bool = False, **render_kwargs) -> dict[str, torch.Tensor]:
        """planes(ws) then render(planes, ws, c); the result also holds ``planes``. ``channels_last``:
        the backbone's and the super-resolution's activations channels-last (the same values up to
        rounding; ``engine.nets.stylegan2.synthesis``)."""
        layout = {"channels_last": True} if channels_last else {}
        planes = self.planes(ws, noise_mode=noise_mode, noise_inputs=noise_inputs, noise_generator=noise_generator,
                             impl=impl, fused_modconv=fused_modconv, force_fp32=force_fp32, **layout)
        out = self.render(planes, ws, c, impl=impl, fused_modconv=fused_modconv, force_fp32=force_fp32, **layout,
                          **render_kwargs)
        out["planes"] = planes
        return out

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                c_render: torch.Tensor | None = None, **synthesis_kwargs) -> dict[str, torch.Tensor]:
        """mapping(z, c) then synthesis(ws, c_render or c)."""
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, c if c_render is None else c_render, **synthesis_kwargs)


# ----------------------------------------------------------------------------- slim presets

def slim_generator(preset: str = "slim128", seed: int = 0, device: str | torch.device = "cpu") -> TriPlaneGenerator:
    """``TriPlaneGenerator.from_config(PRESETS[preset], seed)`` on ``device``: the same weights for
    the same (preset, seed)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown EG3D preset {preset!r}; known: {', '.join(PRESETS)}")
    return TriPlaneGenerator.from_config(PRESETS[preset], seed=seed).to(device)
