"""deepshrink.quant"""
