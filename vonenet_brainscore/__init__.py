"""VOneNets as Brain-Score brain models."""
