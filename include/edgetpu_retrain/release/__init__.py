"""Release stage: the promotion gate, model registry, model card and run report."""
