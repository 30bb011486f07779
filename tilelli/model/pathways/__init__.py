"""The pathways a routed block mixes. Each one reads (B, T, C) and writes (B, T, C), and all
share one cache interface:

    cache = pathway.init_cache(batch_size, max_len, device)   # None when stateless
    y = pathway(x, cache, pos)   # cache=None: whole sequence; else continue from the cache,
                                 # x being positions pos..pos+T-1 (the model's InferenceState.pos)

so a block and the generation loop never ask what kind of pathway they hold.
"""

from tilelli.model.pathways.attention import CausalAttention
from tilelli.model.pathways.conv import CausalConv
from tilelli.model.pathways.dense import Dense
from tilelli.model.pathways.state import StateSpace

__all__ = ["CausalAttention", "CausalConv", "Dense", "StateSpace"]
