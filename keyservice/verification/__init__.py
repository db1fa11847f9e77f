"""The request path: verifying a key or token for a request (cache, failed-check budgets,
limits, quota, usage) and ``@require_key``; imports only keyservice.core.
"""
