"""The model: configs, the routed blocks and their pathways, ternary layers, and checkpoints."""
