"""Messages to customers: the delivery rules every message goes through, and journeys."""
