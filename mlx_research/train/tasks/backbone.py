"""The config check of the image backbone (`models/backbone.py`) shared by the detection and
report tasks: `model.backbone`, `model.small_cnn_features` and the task's level key."""

from __future__ import annotations

import ml_collections

from mlx_research.errors import ConfigError
from mlx_research.models.backbone import BackboneArgumentError, check_backbone


def check_backbone_config(config: ml_collections.ConfigDict, levels_key: str | None = None) -> None:
    """Raises ConfigError naming the key when `models.backbone.check_backbone` rejects
    `model.backbone`, `model.small_cnn_features` or `model.<levels_key>` (a level name or a
    sequence of them; None: the task uses the deepest map)."""
    m = config.model
    levels = None if levels_key is None else m[levels_key]
    if isinstance(levels, str):
        levels = (levels,)
    try:
        check_backbone(m.backbone, m.small_cnn_features, levels)
    except BackboneArgumentError as e:
        key = levels_key if e.argument == "feature_levels" else e.argument
        raise ConfigError(f"config: 'model.{key}' {e.reason}") from None
