"""Steering a run in conversation: the chat session and the LLM tools it calls.

This package sits above :mod:`facsynth.graph`: its tools start, steer and review
synthesis runs, so nothing below it imports it.
"""
