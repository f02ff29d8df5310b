"""deepshrink.models"""
