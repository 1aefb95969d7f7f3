"""The daemon's HTTP side: health for ops now, signed-link pages for customers."""
