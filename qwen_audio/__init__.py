"""Qwen-Audio re-implemented from scratch on PyTorch Lightning (README.md: Layout).

A regular package, not a namespace one, so that one checkout's files are the whole of it: import-linter and grimp
see one tree, and a second checkout on the path (an editable install elsewhere) cannot add modules to it.
"""
