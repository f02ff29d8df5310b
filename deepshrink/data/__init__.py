"""deepshrink.data"""
