"""Beside the request path: issuing and managing keys (store, principals, schemas, the HTTP
API, the CLI, the dashboard, webhooks); imports keyservice.core and the request path
(keyservice.verification).
"""
