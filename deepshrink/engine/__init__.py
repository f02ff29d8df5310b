"""deepshrink.engine"""
