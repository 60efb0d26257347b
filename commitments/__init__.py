"""Layer-to-region commitments, one JSON file per model; read by vonenet_brainscore.brain.commitments."""
