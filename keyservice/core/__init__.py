"""The bottom layer: a key's model and format, settings, errors and the app's state; imports
nothing of keyservice's above it.
"""
