"""Command line: ``fcnn-deblur {deblur,demo,train,import-matconvnet,models}`` (:mod:`.commands`)."""

from .commands import build_parser, main

__all__ = ["build_parser", "main"]
