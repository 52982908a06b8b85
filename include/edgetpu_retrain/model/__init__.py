"""Model stage: training config, SSD detector, losses, input pipeline and training loop."""
