"""Report: run every method, then tables, plots, bootstrap intervals, Markdown / HTML / PDF."""
