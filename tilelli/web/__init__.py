"""The model in a browser tab: the engine compiled to WebAssembly and a static chat page."""
