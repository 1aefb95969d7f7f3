"""The pipeline: from a stored inbound row to a ticket message and its notifications."""
