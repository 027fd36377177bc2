"""The model: ResNet trunk, CAM head and BoostLU; the speed options; ImageNet weights; XLA presets."""
