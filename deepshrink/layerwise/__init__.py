"""deepshrink.layerwise"""
