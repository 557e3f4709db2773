"""Outcomes across the practice (issue 19): the summary, its page and its route."""
