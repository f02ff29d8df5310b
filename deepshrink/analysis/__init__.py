"""deepshrink.analysis"""
