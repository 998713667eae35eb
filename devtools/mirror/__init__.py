"""Synthetic look-alikes of the real corpora, packaged in their official archive layouts."""
