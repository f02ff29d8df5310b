"""deepshrink.prune"""
