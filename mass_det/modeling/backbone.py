"""ResNet with non-local blocks in its late stage(s), alone (C4) or under an FPN (paper §2.1.2, §2.1.4).

Non-local blocks are *added next to* the original residual blocks of a stage, under their own child names
(``res5.nonlocal2`` follows ``res5.2``), never inserted into the numbered block list: every original
parameter keeps its name (``res5.2.conv3.weight``), so ImageNet R-50 weights from a local file load into
every original block exactly as they would into detectron2's plain ResNet.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import ResNet, build_resnet_backbone
from torch import nn

from .nonlocal_block import NonLocalBlock2D

__all__ = [
    "NonLocalResNet",
    "build_nonlocal_resnet_backbone",
    "build_nonlocal_resnet_fpn_backbone",
    "convert_torchvision_resnet_names",
]


class NonLocalResNet(ResNet):
    """detectron2's :class:`ResNet` plus non-local blocks after chosen residual blocks.

    The stage ``nn.Sequential`` keeps its numbered children (``"0"``, ``"1"``, ...) and gains children
    named ``"nonlocal<k>"`` right after block ``k``; ``nn.Sequential`` runs children in insertion order.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: list[list[nn.Module]],
        *,
        nonlocal_blocks: Mapping[str, Mapping[int, nn.Module]],
        out_features: list[str] | None = None,
        freeze_at: int = 0,
    ):
        """
        Args:
            stem, stages, out_features, freeze_at: as for :class:`ResNet`.
            nonlocal_blocks: ``{stage name: {index of the residual block it follows: block}}``,
                e.g. ``{"res5": {2: NonLocalBlock2D(2048)}}``. Stages must not be frozen.
        """
        super().__init__(stem, stages, out_features=out_features, freeze_at=freeze_at)
        for name, after in nonlocal_blocks.items():
            if name not in self.stage_names:
                raise ValueError(
                    f"non-local stage {name!r} is not in this backbone (stages: {self.stage_names}; "
                    "C4 models build res5 inside the ROI head)"
                )
            stage_idx = self.stage_names.index(name)
            if freeze_at >= stage_idx + 2:
                raise ValueError(f"non-local blocks in frozen stage {name} (FREEZE_AT={freeze_at})")
            stage = self.stages[stage_idx]
            bad = [k for k in after if not 0 <= k < len(stage)]
            if bad:
                raise ValueError(f"{name} has {len(stage)} blocks, cannot follow block(s) {bad}")
            children: OrderedDict[str, nn.Module] = OrderedDict()
            for k, block in enumerate(stage):
                children[str(k)] = block
                if k in after:
                    children[f"nonlocal{k}"] = after[k]
            new_stage = nn.Sequential(children)
            setattr(self, name, new_stage)  # same attribute, same place in named_children()
            self.stages[stage_idx] = new_stage


def build_nonlocal_blocks(
    cfg, stage_shapes: Mapping[str, tuple[int, int]]
) -> dict[str, dict[int, nn.Module]]:
    """Non-local blocks requested by ``cfg.MODEL.NONLOCAL``.

    Args:
        stage_shapes: ``{stage name: (channels, number of residual blocks)}`` of the built ResNet.

    Returns:
        ``{stage: {k: block}}`` with ``NUM_BLOCKS`` blocks per stage of ``STAGES``, following the last
        ``NUM_BLOCKS`` residual blocks of that stage (the late stage, as the paper advises).
    """
    nl_cfg = cfg.MODEL.NONLOCAL
    if not nl_cfg.ENABLED:
        return {}
    out: dict[str, dict[int, nn.Module]] = {}
    for name in nl_cfg.STAGES:
        if name not in stage_shapes:
            raise ValueError(
                f"MODEL.NONLOCAL.STAGES has {name!r}, which the backbone does not build "
                f"(it has {sorted(stage_shapes)}; C4 models build res5 inside the ROI head)"
            )
        channels, n_res = stage_shapes[name]
        k = nl_cfg.NUM_BLOCKS
        if not 1 <= k <= n_res:
            raise ValueError(f"MODEL.NONLOCAL.NUM_BLOCKS must be in [1, {n_res}] for {name}, got {k}")
        out[name] = {
            idx: NonLocalBlock2D(
                channels,
                max(int(round(channels * nl_cfg.INTER_CHANNELS)), 1),
                subsample=nl_cfg.SUBSAMPLE,
                norm=nl_cfg.NORM,
            )
            for idx in range(n_res - k, n_res)
        }
    return out


@BACKBONE_REGISTRY.register()
def build_nonlocal_resnet_backbone(cfg, input_shape: ShapeSpec) -> NonLocalResNet:
    """``build_resnet_backbone`` plus the non-local blocks of ``cfg.MODEL.NONLOCAL``."""
    base = build_resnet_backbone(cfg, input_shape)
    stage_shapes = {
        n: (base._out_feature_channels[n], len(s)) for n, s in zip(base.stage_names, base.stages)
    }
    return NonLocalResNet(
        base.stem,
        [list(stage.children()) for stage in base.stages],
        nonlocal_blocks=build_nonlocal_blocks(cfg, stage_shapes),
        out_features=list(base._out_features),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


@BACKBONE_REGISTRY.register()
def build_nonlocal_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """FPN over :func:`build_nonlocal_resnet_backbone`, as ``build_resnet_fpn_backbone`` does for ResNet."""
    bottom_up = build_nonlocal_resnet_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def convert_torchvision_resnet_names(state_dict: Mapping) -> dict:
    """Rename a torchvision ``resnet50`` state dict to detectron2's ResNet names.

    ``layer1.0.bn1.weight`` -> ``res2.0.conv1.norm.weight``, ``conv1.weight`` -> ``stem.conv1.weight``,
    ``downsample.{0,1}`` -> ``shortcut{,.norm}``; the ImageNet classifier (``fc.*``) and
    ``num_batches_tracked`` are dropped. Load the result with matching heuristics (suffix matching)
    so ``res2.0.conv1.weight`` lands in ``backbone.bottom_up.res2.0.conv1.weight``. torchvision models
    stride in the 3x3 conv and expect RGB input scaled by ImageNet std: set
    ``MODEL.RESNETS.STRIDE_IN_1X1 False`` and ``MODEL.PIXEL_STD [57.375, 57.12, 58.395]``.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        k = key if "layer" in key else "stem." + key
        for t in (1, 2, 3, 4):
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[k] = value
    return out
