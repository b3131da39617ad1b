"""Revisions of the results database (a package only so that it is installed with abl)."""
