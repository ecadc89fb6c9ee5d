"""Run directories: the versioned run JSON and how runs are named."""
