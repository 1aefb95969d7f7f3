"""How mail arrives: each route stores the raw bytes durably before it says "accepted"."""
