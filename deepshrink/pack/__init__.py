"""The packed `.dsz` format: compressed models stored at their real bit width (see `format`)."""
from .format import FORMAT, VERSION, load, save
from .report import format_report, inspect

__all__ = ["FORMAT", "VERSION", "format_report", "inspect", "load", "save"]
