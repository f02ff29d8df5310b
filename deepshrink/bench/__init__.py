"""deepshrink.bench"""
