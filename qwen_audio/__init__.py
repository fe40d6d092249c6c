"""Qwen-Audio re-implemented from scratch on PyTorch Lightning (README.md: Layout).

It is a regular package, not a namespace one, so one checkout's files are the whole of it.
import-linter and grimp see one tree. A second checkout on the path (an editable install elsewhere)
cannot add modules to it.
"""
