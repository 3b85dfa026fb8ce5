"""Foundations every stage shares: settings, the OpenAI error envelope, target-model token
counting, and the bounded executor that keeps torch off the event loop.

The bottom of the import graph: imports no other `proxy` package.
"""
