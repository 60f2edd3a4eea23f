"""Command-line tools, e.g. ``convert_torchvision`` (torchvision ResNet state dict -> ``.npz``
of our ResNet variables). Run them as ``python -m mlx_research.tools.<name>``."""
