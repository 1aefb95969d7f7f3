"""maildesk: an email-first helpdesk daemon. Mail in, tickets out."""

__version__ = "0.1.0"
