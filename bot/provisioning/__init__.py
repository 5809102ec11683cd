"""Writing what the ledger records into customers' Microsoft Teams tenants (SPEC §9): app-only
tokens per tenant, the Teams number-management calls of Microsoft Graph, and the worker that
sends the outbox's jobs."""
