"""The worker's HTTP API: views, the OpenAPI document, the customer-state view."""
