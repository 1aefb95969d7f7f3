"""Tickets: the domain of maildesk. Knows people and conversations, not e-mail syntax."""
