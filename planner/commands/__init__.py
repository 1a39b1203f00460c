"""The commands: each takes resolved inputs and returns a typed result; none prints (rendering is
planner/render, the exit codes cli.py's)."""
