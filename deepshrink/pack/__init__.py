"""deepshrink.pack"""
